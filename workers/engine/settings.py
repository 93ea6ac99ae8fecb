"""What a user chooses for an audit. Pydantic only (no torch), so the HTTP service can validate requests.

Defaults follow the original paper (see ../shared/DESIGN.md and docs/decisions/): Integrated Gradients with
50 steps from a black baseline, SmoothGrad/VarGrad with 50 samples of noise at 0.15 x (max - min) of each
image, GradCAM on the last convolution.
"""

from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

# The saliency methods' registry names, known here without torch so the service can refuse a typo at once
# (a test keeps this in step with the registry in workers.engine.methods).
METHOD_NAMES = (
    "gradient",
    "gradient_x_input",
    "integrated_gradients",
    "smoothgrad",
    "vargrad",
    "guided_backprop",
    "gradcam",
    "guided_gradcam",
    "edge_detector",
)


class RandomizationTest(StrEnum):
    cascading = "cascading"  # model parameters, from the top layer down, cumulatively
    independent = "independent"  # model parameters, one layer at a time
    data = "data"  # the same architecture trained on permuted labels (the random-label twin)


PARAMETER_TESTS = (RandomizationTest.cascading, RandomizationTest.independent)


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


class Preprocessing(BaseModel):
    """How probe files become the model's input tensor."""

    model_config = ConfigDict(extra="forbid")

    size: tuple[int, int] | None = Field(
        None, description="Resize images to (height, width); arrays are never resized."
    )
    channels: Annotated[int, Field(ge=1, le=4)] | None = Field(
        None, description="1 (grey) or 3 (RGB) for images; defaults to what the model's input expects."
    )
    value_scale: Annotated[float, Field(gt=0)] | None = Field(
        None,
        description="Raw values are divided by this. Default: 255 for images and integer arrays (8-bit to "
        "[0, 1]), 1 for float arrays, which are taken as they are.",
    )
    mean: list[float] | None = Field(None, description="Per-channel mean subtracted after scaling.")
    std: list[float] | None = Field(None, description="Per-channel std divided after subtracting the mean.")
    layout: Layout = Field(Layout.nchw, description="Axis order of .npy/.npz arrays.")

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

    model_config = ConfigDict(extra="forbid")

    optimizer: Optimizer = Optimizer.adam
    learning_rate: Annotated[float, Field(gt=0, le=10)] = 1e-3
    batch_size: Annotated[int, Field(ge=1)] = 64
    max_epochs: Annotated[int, Field(ge=1, le=100_000)] = 300
    max_seconds: Annotated[float, Field(gt=0)] = 3600.0
    memorize_accuracy: Annotated[float, Field(gt=0, le=1)] = Field(
        0.95, description="Training accuracy each model must reach on the labels it is trained on."
    )
    holdout_fraction: Annotated[float, Field(gt=0, lt=1)] = Field(
        0.2, description="Share of the training images held out to measure accuracy on true labels."
    )


class VerdictRule(BaseModel):
    """When a method passes: its maps must change a lot once the model is randomized.

    The method passes a test when the upper bound of the 95% confidence interval of the mean ``metric`` at
    the judged stage lies below ``threshold``. Cascading randomization is judged with every layer
    randomized; independent randomization with the top (logit) layer alone randomized, the layer whose
    randomization changes what the model computes most directly. Data randomization is judged on the
    random-label twin, and, where a true-label control exists, its upper bound must also lie
    ``retrain_gap`` below the similarity of the two true-label models.
    """

    model_config = ConfigDict(extra="forbid")

    metric: Metric = Metric.spearman_abs
    threshold: Annotated[float, Field(gt=-1, le=1)] = 0.5
    retrain_gap: Annotated[float, Field(ge=0, le=2)] = Field(
        0.2,
        description="Data randomization with a true-label control: the twin's upper bound must also lie "
        "this far below the mean similarity of the two true-label models (the retrain floor).",
    )


class AuditSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    methods: list[str] = Field(default_factory=lambda: list(METHOD_NAMES))
    tests: list[RandomizationTest] = Field(
        default_factory=lambda: [RandomizationTest.cascading, RandomizationTest.independent]
    )
    seed: int = 0
    target: TargetPolicy = TargetPolicy.predicted
    reinit: ReinitScheme = ReinitScheme.default
    reinit_std: Annotated[float, Field(gt=0)] = 0.01
    ig_steps: Annotated[int, Field(ge=2, le=1000)] = 50
    noise_samples: Annotated[int, Field(ge=2, le=1000)] = 50
    noise_level: Annotated[float, Field(gt=0, le=2)] = 0.15
    gradcam_layer: str | None = Field(None, description="Layer for GradCAM; default the last convolution.")
    batch_size: Annotated[int, Field(ge=1)] = 64
    internal_batch_size: Annotated[int, Field(ge=1)] = 256
    max_images: Annotated[int, Field(ge=2, le=10_000)] = 1000
    conversion_atol: Annotated[float, Field(gt=0)] = 1e-4
    conversion_rtol: Annotated[float, Field(ge=0)] = 1e-3
    preprocessing: Preprocessing = Field(default_factory=Preprocessing)
    training: TrainingRecipe = Field(default_factory=TrainingRecipe)
    verdict: VerdictRule = Field(default_factory=VerdictRule)
    device: str = Field("auto", description="'auto' (CUDA when present), 'cpu', or a torch device string.")

    @field_validator("methods", "tests")
    @classmethod
    def _non_empty_unique(cls, value: list) -> list:
        if not value:
            raise ValueError("name at least one")
        if len(set(value)) != len(value):
            raise ValueError("names must not repeat")
        return value

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, value: list[str]) -> list[str]:
        unknown = [name for name in value if name not in METHOD_NAMES]
        if unknown:
            raise ValueError(
                f"unknown saliency method {unknown[0]!r}; available: {', '.join(sorted(METHOD_NAMES))}"
            )
        return value
