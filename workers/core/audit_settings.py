"""What a user chooses for an audit. Pydantic only (no torch), so the HTTP service can validate requests.

Defaults follow the original paper (see ../shared/DESIGN.md and docs/decisions/): Integrated Gradients with
50 steps from a black baseline, SmoothGrad/VarGrad with 50 samples of noise at 0.15 x (max - min) of each
image, GradCAM on the last convolution.
"""

from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Every setting is bounded (docs/decisions/0013): no request can ask for unbounded work or turn a check off.
_BOUNDED = ConfigDict(extra="forbid", allow_inf_nan=False)
MAX_SIDE = 4096  # pixels, for resizing images
MAX_PROBE_SET_PIXELS = 256 * 1024**2  # height x width x channels over one image set; a service may set less
MAX_CHANNEL_VALUES = 4  # mean/std entries: one per channel, at most RGBA
Side = Annotated[int, Field(ge=1, le=MAX_SIDE)]
ChannelValue = Annotated[float, Field(ge=-1e6, le=1e6)]

# The saliency methods' registry names, known here without torch so the service can refuse a typo at once
# (a test keeps this in step with the registry in workers.engine.methods).
METHOD_SUMMARIES = {
    "gradient": "d logit / d input, signed",
    "gradient_x_input": "the gradient times the input",
    "integrated_gradients": "gradients averaged along a path from a black image (50 steps)",
    "smoothgrad": "the gradient averaged over 50 noisy copies of the input",
    "vargrad": "the variance of the gradient over the same noisy copies",
    "guided_backprop": "backward through ReLUs passing only positive gradients (ReLU-only models)",
    "gradcam": "the last feature map weighted by its mean gradient, upsampled",
    "guided_gradcam": "guided_backprop times gradcam (ReLU-only models)",
    "edge_detector": "Sobel edges of the input: the model-free baseline",
}
METHOD_NAMES = tuple(METHOD_SUMMARIES)
# The same names as an enum, so the JSON Schema (and clients generated from the OpenAPI document) list them
MethodName = StrEnum("MethodName", [(name, name) for name in METHOD_NAMES], module=__name__)
MethodName.__doc__ = "A saliency method by its registry name (`saliency-audit methods` tells what each does)."


class RandomizationTest(StrEnum):
    cascading = "cascading"  # model parameters, from the top layer down, cumulatively
    independent = "independent"  # model parameters, one layer at a time
    data = "data"  # the same architecture trained on permuted labels (the random-label twin)
    # later sanity checks (docs/decisions/0023)
    input_invariance = "input_invariance"  # inputs shifted by a constant, the first bias compensating
    random_logit = "random_logit"  # the map of the explained class vs the map of another class
    smooth_mprt = "smooth_mprt"  # cascading, on maps averaged over noisy copies of each input
    efficient_mprt = "efficient_mprt"  # the rise of the maps' entropy from trained to fully randomized


PARAMETER_TESTS = (RandomizationTest.cascading, RandomizationTest.independent)


class StageUnit(StrEnum):
    """What one stage of the parameter tests randomizes (docs/decisions/0025)."""

    blocks = "blocks"  # the model's blocks: named by the file, else segments between cut points (default)
    layers = "layers"  # one layer with parameters per stage


class LayerOrder(StrEnum):
    """The order in which the parameter tests walk the layers."""

    top_down = "top_down"  # from the logits down, as the paper did (default)
    bottom_up = "bottom_up"  # from the input up (Hedström et al. 2023)


class Outcome(StrEnum):
    passed = "pass"
    failed = "fail"
    inconclusive = "inconclusive"


class TargetPolicy(StrEnum):
    """Which class each map explains."""

    predicted = "predicted"  # the trained model's prediction, held fixed across stages (default)
    label = "label"  # the probe labels the user supplied
    randomized_argmax = "randomized_argmax"  # the argmax of the model at each stage, as the original code


class ReinitScheme(StrEnum):
    default = "default"  # the layer's own reset_parameters(), as torch initializes a fresh layer
    normal = "normal"  # weights and biases drawn from N(0, reinit_std^2)


class Metric(StrEnum):
    spearman_abs = "spearman_abs"
    spearman_signed = "spearman_signed"
    ssim = "ssim"
    hog = "hog"


class Layout(StrEnum):
    nchw = "NCHW"
    nhwc = "NHWC"


class Upsampling(StrEnum):
    bilinear = "bilinear"  # as Selvaraju et al. and captum's LayerAttribution.interpolate
    nearest = "nearest"  # each cell's value over the pixels it covers: the coarse grid as it is


class IgBaseline(StrEnum):
    black = "black"  # pixel value 0 preprocessed like the probes: -mean/std per channel
    zero = "zero"  # zeros of the model's input (the mean colour when mean/std normalize the probes)
    mean = "mean"  # a uniform image of each probe's own per-channel mean


class Preprocessing(BaseModel):
    """How probe files become the model's input tensor."""

    model_config = _BOUNDED

    size: tuple[Side, Side] | None = Field(
        None,
        description=f"Resize images to (height, width), each at most {MAX_SIDE}; arrays are never resized.",
    )
    channels: Annotated[int, Field(ge=1, le=4)] | None = Field(
        None, description="1 (grey) or 3 (RGB) for images; defaults to what the model's input expects."
    )
    value_scale: Annotated[float, Field(gt=0, le=1e6)] | None = Field(
        None,
        description="Raw values are divided by this. Default: 255 for images and integer arrays (8-bit to "
        "[0, 1]), 1 for float arrays, which are taken as they are.",
    )
    mean: list[ChannelValue] | None = Field(
        None,
        min_length=1,
        max_length=MAX_CHANNEL_VALUES,
        description="Per-channel mean subtracted after scaling.",
    )
    std: list[ChannelValue] | None = Field(
        None,
        min_length=1,
        max_length=MAX_CHANNEL_VALUES,
        description="Per-channel std divided after subtracting the mean.",
    )
    layout: Layout | None = Field(
        None,
        description="Axis order of .npy/.npz arrays. Default: the model's own input layout (NHWC for "
        "channels-last models such as Keras and Flax exports, NCHW otherwise).",
    )

    @field_validator("std")
    @classmethod
    def _std_positive(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and any(s <= 0 for s in value):
            raise ValueError("every std must be positive")
        return value


class Optimizer(StrEnum):
    adam = "adam"
    sgd = "sgd"  # with momentum 0.9


class TrainingRecipe(BaseModel):
    """How the service trains the random-label twin and the true-label control: one recipe for both."""

    model_config = _BOUNDED

    optimizer: Optimizer = Field(Optimizer.adam, description="Optimizer that trains each model.")
    learning_rate: Annotated[float, Field(gt=0, le=10)] = Field(
        1e-3, description="The optimizer's learning rate."
    )
    batch_size: Annotated[int, Field(ge=1, le=4096)] = Field(64, description="Training images per step.")
    max_epochs: Annotated[int, Field(ge=1, le=100_000)] = Field(300, description="Epochs per model, at most.")
    max_seconds: Annotated[float, Field(gt=0, le=86_400)] = Field(
        3600.0, description="Seconds of training per model, at most."
    )
    memorize_accuracy: Annotated[float, Field(gt=0, le=1)] = Field(
        0.95, description="Training accuracy each model must reach on the labels it is trained on."
    )
    holdout_fraction: Annotated[float, Field(gt=0, lt=1)] = Field(
        0.2, description="Share of the training images held out to measure accuracy on true labels."
    )
    models: Annotated[int, Field(ge=1, le=10)] = Field(
        3,
        description="Random-label twins trained, each with its own seed, and as many true-label controls.",
    )
    max_models: Annotated[int, Field(ge=1, le=30)] = Field(
        9,
        description="A data test still undecided trains ``models`` more twins and controls, up to this many "
        "of each (never fewer than ``models``).",
    )


class VerdictRule(BaseModel):
    """When a method passes, fails, or the audit cannot tell (docs/decisions/0008).

    Each test reduces its curve to one statistic per draw and image: the parameter tests take the mean
    ``metric`` over their stages (the area under the curve, so similarity that survives while the upper
    layers are randomized counts), the data test the twin's similarity. Its 95% interval covers both
    images and draws. The method passes when the upper bound lies below the limit, fails when the lower
    bound does not, and is inconclusive otherwise, or when the draws disagree, too few images have a
    defined similarity, or any map holds NaN or inf. The limit is ``threshold``; in the data test with
    true-label controls the twins must also lie ``retrain_gap`` below the similarity of honestly
    retrained models, by that distance's own interval.
    """

    model_config = _BOUNDED

    metric: Metric = Field(Metric.spearman_abs, description="Similarity the verdict is judged on.")
    threshold: Annotated[float, Field(gt=-1, le=1)] = Field(
        0.5, description="A method passes when the upper 95% bound of the similarity lies below this."
    )
    retrain_gap: Annotated[float, Field(ge=0, le=2)] = Field(
        0.2,
        description="Data randomization: the retrain floor (the similarity of the true-label models) less "
        "the twins' similarity must exceed this by its 95% interval (docs/decisions/0017, 0018); when the "
        "floor is not this far above the twins' cross-image floor, the test has no power and is "
        "inconclusive.",
    )
    min_defined_images: Annotated[int, Field(ge=2, le=10_000)] = Field(
        5, description="Fewer images with a defined similarity than this make a verdict inconclusive."
    )


class AuditSettings(BaseModel):
    model_config = _BOUNDED

    methods: list[MethodName] | None = Field(
        None,
        max_length=len(METHOD_NAMES),
        description="Saliency methods to audit. Default: every method defined on the model; one that is "
        "not (Guided Backprop where a nonlinearity other than ReLU sits, GradCAM without a feature map) is "
        "skipped and listed in the report with the reason. A method named here that is not defined on the "
        "model refuses the audit.",
    )
    tests: list[RandomizationTest] = Field(
        default_factory=lambda: [RandomizationTest.cascading, RandomizationTest.independent],
        max_length=len(RandomizationTest),
        description="Sanity checks to run.",
    )
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)] = Field(
        0, description="Seeds every re-initialization, noise sample and class draw."
    )
    draws: Annotated[int, Field(ge=1, le=100)] = Field(
        3, description="Independent re-initializations of the layers per parameter test."
    )
    max_draws: Annotated[int, Field(ge=1, le=100)] = Field(
        9,
        description="A parameter test whose interval still contains the limit gets ``draws`` more draws, "
        "up to this many in all (never fewer than ``draws``).",
    )
    order: LayerOrder = Field(LayerOrder.top_down, description="Order the layers are randomized in.")
    stages: StageUnit = Field(
        StageUnit.blocks,
        description="What a stage of the parameter tests randomizes: a block (a residual or named block, "
        "as the paper randomized Inception v3's 17 blocks) or one layer.",
    )
    max_stages: Annotated[int, Field(ge=1, le=10_000)] = Field(
        24, description="Blocks stages: adjacent blocks are merged evenly to at most this many stages."
    )
    archive_all_draws: bool = Field(
        False, description="Keep every draw's maps in maps.zip, not only draw 0's."
    )
    target: TargetPolicy = Field(TargetPolicy.predicted, description="Class each map explains.")
    reinit: ReinitScheme = Field(ReinitScheme.default, description="How layers are re-initialized.")
    reinit_std: Annotated[float, Field(gt=0, le=1e38)] = Field(  # huge values test overflow handling
        0.01, description="Std of the 'normal' re-initialization."
    )
    ig_steps: Annotated[int, Field(ge=2, le=1000)] = Field(50, description="Integrated Gradients steps.")
    ig_baseline: IgBaseline = Field(
        IgBaseline.black,
        description="Integrated Gradients' starting image: 'black' (pixel value 0, preprocessed like the "
        "probes), 'zero' (zeros of the model input) or 'mean' (each probe's mean colour).",
    )
    noise_samples: Annotated[int, Field(ge=2, le=1000)] = Field(
        50, description="SmoothGrad's and VarGrad's noisy samples per image."
    )
    noise_level: Annotated[float, Field(gt=0, le=2)] = Field(
        0.15, description="SmoothGrad's and VarGrad's noise std as a fraction of each image's (max - min)."
    )
    gradcam_layer: str | None = Field(
        None,
        max_length=500,
        description="What GradCAM reads: a module of the source model (e.g. 'layer4.1'), a layer, an ONNX "
        "node or value name. Default: the last feature map (a ViT's last residual stream as a patch grid).",
    )
    gradcam_upsampling: Upsampling = Field(
        Upsampling.bilinear,
        description="How GradCAM's coarse map is brought to the input's size: 'bilinear' (as Selvaraju et "
        "al.) or 'nearest' (the feature map's grid as it is).",
    )
    model_layout: Layout | None = Field(
        None,
        description="The model's input layout: NCHW, or NHWC (channels last, as Keras and Flax export). "
        "Default: read from the graph (a leading Transpose or Reshape to channels-first, a Conv reading the "
        "input, else its shape).",
    )
    output: str | None = Field(
        None,
        max_length=500,
        description="The model output to audit, by name or 0-based position, for models with several "
        "(auxiliary heads). Default: the first.",
    )
    batch_size: Annotated[int, Field(ge=1, le=4096)] | None = Field(
        None,
        description="Probe images per method call. Default: 256, or fewer where memory_budget_mib needs; "
        "an explicit value is an upper limit.",
    )
    internal_batch_size: Annotated[int, Field(ge=1, le=65_536)] | None = Field(
        None,
        description="Images per forward/backward pass of Integrated Gradients' steps and noise samples. "
        "Default: as many as memory_budget_mib allows; an explicit value is an upper limit.",
    )
    memory_budget_mib: Annotated[int, Field(ge=64, le=1_048_576)] | None = Field(
        None,
        description="Memory the audit may use on its device, in MiB; batch sizes and the trained model's "
        "recorded forward passes follow from it. Default: a quarter of the machine's memory (at most "
        "8 GiB) on the CPU, half of the GPU's memory on a GPU.",
    )
    invariance_shift: Annotated[float, Field(ge=-10, le=10)] = Field(
        -1.0,
        description="Input invariance: the constant m added to every probe, in units of each channel's value "
        "range over the probe set (max - min); -1 moves digits in [0, 1] to [-1, 0], as Kindermans et al. "
        "did. The first layer's bias absorbs it, so the shifted model computes the same logits.",
    )
    invariance_tolerance: Annotated[float, Field(gt=0, le=1)] = Field(
        0.01,
        description="Input invariance: a method is invariant when the upper 95% bound of the relative L2 "
        "difference ||A(f2, x + m) - A(f1, x)|| / ||A(f1, x)|| lies below this, and not when its lower "
        "bound does not (docs/decisions/0023).",
    )
    random_logit_metric: Metric = Field(
        Metric.ssim,
        description="Random logit: how the map of the explained class is compared with the map of a "
        "uniformly drawn other class (Sixt et al. 2020 and Quantus use SSIM).",
    )
    random_logit_threshold: Annotated[float, Field(gt=-1, le=1)] = Field(
        0.5,
        description="Random logit: a method passes when the upper 95% bound of that similarity lies below "
        "this (its maps depend on the class), fails when the lower bound does not.",
    )
    smooth_mprt_samples: Annotated[int, Field(ge=1, le=1000)] = Field(
        50,
        description="Smooth MPRT: noisy copies of each probe whose maps are averaged, at every stage and "
        "for the trained reference (Hedström et al. and Quantus: 50).",
    )
    smooth_mprt_noise: Annotated[float, Field(gt=0, le=2)] = Field(
        0.1, description="Smooth MPRT: noise std as a fraction of each probe's value range (max - min)."
    )
    smooth_mprt_order: LayerOrder = Field(
        LayerOrder.bottom_up,
        description="Smooth MPRT: the order its cascade walks the layers (Hedström et al.: bottom-up).",
    )
    efficient_mprt_bins: Annotated[int, Field(ge=2, le=10_000)] = Field(
        100, description="Efficient MPRT: histogram bins of the discrete entropy of each normalized map."
    )
    efficient_mprt_min_share: Annotated[float, Field(ge=-1, le=1)] = Field(
        0.5,
        description="Efficient MPRT: a method passes when the lower 95% bound of (H(random) - H(trained)) / "
        "(H(random mask) - H(trained)), the share of the way to noise that the entropy of its maps rises "
        "when every layer is randomized, lies above this, fails when its upper bound does not. Hedström et "
        "al.'s relative rise (H(random) - H(trained)) / H(trained) is reported beside it.",
    )
    max_images: Annotated[int, Field(ge=2, le=10_000)] = Field(1000, description="Probe images, at most.")
    conversion_atol: Annotated[float, Field(gt=0, le=0.1)] = Field(
        1e-4,
        description="Largest |logit difference| allowed between the converted model and its own runtime.",
    )
    conversion_rtol: Annotated[float, Field(ge=0, le=0.1)] = Field(
        1e-3, description="Relative part of the logit tolerance between the converted model and its runtime."
    )
    preprocessing: Preprocessing = Field(default_factory=Preprocessing)
    training: TrainingRecipe = Field(default_factory=TrainingRecipe)
    verdict: VerdictRule = Field(default_factory=VerdictRule)
    device: str = Field(
        "auto",
        pattern=r"^(auto|cpu|cuda|cuda:[0-9]{1,2})$",
        description="'auto' (CUDA when present), 'cpu', 'cuda' or 'cuda:<index>'.",
    )

    @field_validator("methods", "tests")
    @classmethod
    def _non_empty_unique(cls, value: list | None) -> list | None:
        if value is None:
            return value
        if not value:
            raise ValueError("name at least one")
        if len(set(value)) != len(value):
            raise ValueError("names must not repeat")
        return value

    @field_validator("methods", mode="before")
    @classmethod
    def _known_methods(cls, value: object) -> object:
        """Before the enum's own check, so an unknown name is named with every valid one."""
        names = value if isinstance(value, list) else []
        unknown = [name for name in names if isinstance(name, str) and name not in METHOD_NAMES]
        if unknown:
            raise ValueError(
                f"unknown saliency method {unknown[0]!r}; available: {', '.join(sorted(METHOD_NAMES))}"
            )
        return value
