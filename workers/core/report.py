"""The audit report, defined once. Torch-free: the CLI, the workers and the HTTP service share it.

``AuditReport.model_json_schema()`` is exported to ``openapi/report.schema.json``; a test keeps the two
in step. Bump ``SCHEMA_VERSION`` on any change a reader would notice (major on breaking changes).
"""

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from workers.core.audit_settings import AuditSettings, LayerOrder, Metric, Outcome, RandomizationTest

SCHEMA_VERSION = "2.6"
REPORT_FILE = "report.json"  # names of the outputs of an audit
ARCHIVE_FILE = "maps.zip"
HTML_FILE = "report.html"  # written after the audit from the other two (workers.engine.html_report)

# names of the per-image measures in ``Stage.measures`` (the checks that make them import torch; the
# summary and the page read them from here)
RELATIVE_L2 = "relative_l2_difference"  # input invariance
ENTROPY_TRAINED = "entropy_trained"  # efficient MPRT
ENTROPY_RANDOM = "entropy_random"
ENTROPY_MASK = "entropy_random_mask"
ENTROPY_RISE = "entropy_rise"  # Hedström et al.'s eMPRT score, per image
ENTROPY_SHARE = "entropy_rise_share"  # the judged statistic


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Summary(_Frozen):
    """A similarity over probe images and random draws (docs/decisions/0008).

    Undefined values (degenerate maps) are counted, never averaged. The interval covers the spread
    between images and between draws (re-initializations, or random-label twins).
    """

    mean: float | None = Field(description="Mean over defined values; null if none is.")
    std: float | None = Field(
        description="Standard deviation between images (of each image's mean over draws)."
    )
    std_between_draws: float | None = Field(
        None, description="Standard deviation between draws (of each draw's mean over images)."
    )
    draw_means: list[float | None] = Field(default_factory=list, description="Mean over images, per draw.")
    ci95_low: float | None = Field(
        description="Lower bound of the 95% interval of the mean (images and draws)."
    )
    ci95_high: float | None = Field(
        description="Upper bound of the 95% interval of the mean (images and draws)."
    )
    n: int = Field(description="Images with a defined value in at least one draw.")
    n_undefined: int = Field(description="Images with none (a constant map has no rank correlation).")
    undefined_values: int = Field(0, description="Undefined (draw, image) values, over all draws.")


MetricTable = dict[Metric, Summary]


class ArtifactInfo(_Frozen):
    filename: str
    sha256: str
    format: Literal["onnx", "torchscript", "torch_export"]
    opset: int | None = Field(None, description="ONNX opset the model was read at (after any conversion).")
    input_layout: Literal["NCHW", "NHWC"] = Field(
        "NCHW",
        description="The model's own input layout, read from its graph; maps are [N, C, H, W] whatever "
        "it is.",
    )


class ConversionCheck(_Frozen):
    """How closely the differentiable torch rebuild matches the artifact's own runtime."""

    reference_runtime: str
    n_images: int
    max_abs_logit_diff: float
    atol: float
    rtol: float
    argmax_agreement: float = Field(description="Fraction of probe images with the same predicted class.")


class LayerInfo(_Frozen):
    index: int = Field(description="Position in forward execution order, 0 = first layer run.")
    name: str
    kind: str
    parameters: int


class ProbeInfo(_Frozen):
    filename: str
    sha256: str
    count: int
    shape: list[int] = Field(description="Shape of the model input built from the probes, N first.")
    labels: bool
    trained_accuracy: float | None = Field(
        None, description="Accuracy of the trained model on labelled probes."
    )


class Stage(_Frozen):
    index: int = Field(
        description="0 is the trained model; k > 0 randomizes k layers (cascading), layer k alone "
        "(independent), or is the random-label twins (data), the shifted inputs and model "
        "(input_invariance), the maps of other classes (random_logit)."
    )
    label: str
    randomized_layers: list[str]
    similarity: MetricTable = Field(description="Trained-model map vs this stage's map of the same image.")
    cross_image_floor: MetricTable = Field(
        description="Trained-model map of one image vs this stage's map of another image: what similarity "
        "means when no image-specific content is shared (e.g. border patterns of unpadded convolutions)."
    )
    degenerate_maps: int = Field(
        description="Maps at this stage that are constant (e.g. all-zero GradCAM), over all draws."
    )
    non_finite_maps: int = Field(0, description="Maps at this stage holding NaN or inf, over all draws.")
    measures: dict[str, Summary] = Field(
        default_factory=dict,
        description="A test's own per-image measures of the raw maps beyond the similarity metrics "
        "(input_invariance: 'relative_l2_difference', ||A(f2, x + m) - A(f1, x)|| / ||A(f1, x)||).",
    )
    note: str | None = Field(
        None, description="How this stage's model or inputs were built, where it matters."
    )


InconclusiveCause = Literal[
    "non_finite_maps",
    "too_few_images",
    "draws_disagree",
    "interval",
    "no_power",
    "floor_spread_unknown",
]


class RetrainMargin(_Frozen):
    """Data test: how far below the retrain floor the twins' similarity lies, with the floor's own chance."""

    mean: float | None = Field(description="Retrain floor minus the twins' mean similarity.")
    ci95_low: float | None = Field(
        description="Over images (paired), twins, and a jackknife over the trained models of the floor."
    )
    ci95_high: float | None
    gap: float = Field(description="Pass needs the lower bound above this; fail when the upper bound is not.")
    models: int = Field(
        description="Trained models behind the floor: the audited one and its true-label controls. With two "
        "(one control) the floor's spread between models cannot be measured, and there is no interval."
    )


class Verdict(_Frozen):
    outcome: Outcome
    reason: str = Field(description="Why, in words, with the numbers behind it.")
    cause: InconclusiveCause | None = Field(
        None,
        description="Why an inconclusive verdict is one: NaN/inf maps, too few defined images, draws whose "
        "own intervals lie on both sides of the limit, an interval that contains the limit, or (data test) "
        "a retrain floor too close to the cross-image floor to leave room for a pass, or a retrain floor "
        "whose spread between models cannot be measured (one true-label control).",
    )
    rule: str
    metric: Metric | None = Field(
        description="The similarity metric judged; null where the statistic is no similarity "
        "(input_invariance judges the relative L2 difference of raw maps, see statistic)."
    )
    statistic: str = Field(description="What was judged, e.g. the mean over the randomized stages.")
    estimate: Summary = Field(description="The judged statistic over images and draws.")
    limit: float = Field(
        description="Pass below this upper bound; fail at or above this lower bound. Data test with "
        "controls: the threshold or the retrain floor's mean less the gap, whichever is lower; the "
        "verdict then weighs the floor's own interval through retrain_margin."
    )
    retrain_margin: RetrainMargin | None = Field(
        None, description="Data test with true-label controls: the twins' distance below the retrain floor."
    )
    similar_layers: list[str] = Field(
        default_factory=list,
        description="Independent test: layers whose randomization alone leaves the maps similar (the "
        "lower bound of that stage's mean is at or above the limit).",
    )


class TestResult(_Frozen):
    test: RandomizationTest
    order: LayerOrder | None = Field(None, description="Parameter tests: the order the layers were walked.")
    draws: int = Field(description="Re-initializations (parameter tests) or random-label twins (data test).")
    stages: list[Stage]
    retrain_floor: MetricTable | None = Field(
        None,
        description="Data test: similarity of models trained on the true labels with other seeds (trained "
        "vs each control, and controls with each other): how much maps differ from retraining alone.",
    )
    verdict: Verdict | None = Field(description="Null for baselines, which need no model.")


class EpochRecord(_Frozen):
    epoch: int
    loss: float
    train_accuracy: float


class TrainingRun(_Frozen):
    role: Literal["random_label_twin", "true_label_control"]
    index: int = Field(description="Which twin or control: 0, 1, ...")
    seed: int
    epochs: int
    seconds: float
    train_accuracy: float = Field(description="On the labels it was trained on (permuted for the twin).")
    heldout_accuracy: float = Field(
        description="On the true labels of held-out images; near chance for the twin."
    )
    chance_accuracy: float = Field(
        description="Accuracy of always answering the most frequent held-out class."
    )
    curve: list[EpochRecord]
    archive_path: str = Field(description="The trained model as ONNX inside maps.zip.")


class TrainingDataInfo(_Frozen):
    filename: str
    sha256: str
    count: int
    classes: int
    heldout: int


class DataRandomizationInfo(_Frozen):
    source: Literal["client", "trained"] = Field(
        description="'client': the twins (and controls) came with the request; 'trained': the engine "
        "trained them."
    )
    twins: list[ArtifactInfo] = Field(default_factory=list)
    twin_conversions: list[ConversionCheck] = Field(default_factory=list)
    controls: list[ArtifactInfo] = Field(default_factory=list)
    control_conversions: list[ConversionCheck] = Field(default_factory=list)
    training_data: TrainingDataInfo | None = None
    training: list[TrainingRun] = Field(default_factory=list)


class ImagePasses(_Frozen):
    """Images sent through a model to compute maps and classes (workers.engine.passes)."""

    forward: int = Field(description="Images through a forward pass (a 16-image batch counts 16).")
    backward: int = Field(description="Images through a backward pass.")


class MethodResult(_Frozen):
    name: str
    baseline: bool = Field(description="Needs no model (the edge detector): a reference row, never judged.")
    stochastic: bool
    parameters: dict[str, float | int | str | None]
    random_mask_calibration: MetricTable = Field(
        description="Trained-model maps vs uniform random masks: a correct metric scores near 0 here."
    )
    self_similarity: MetricTable | None = Field(
        None, description="Stochastic methods only: two runs on the trained model with different noise."
    )
    edge_detector_similarity: MetricTable = Field(
        description="Trained-model maps vs the Sobel edge map of the input, which needs no model at all."
    )
    degenerate_trained_maps: int
    non_finite_trained_maps: int = 0
    tests: list[TestResult]
    seconds: float
    image_passes: ImagePasses | None = Field(
        None,
        description="Passes run for this method's maps; a part shared with another method (SmoothGrad's "
        "and VarGrad's noisy gradients, Guided GradCAM's factors, Gradient x Input's gradient) counts for "
        "the method that computed it first. Null in reports before schema 2.6.",
    )


class Versions(_Frozen):
    engine: str
    python: str
    torch: str
    captum: str
    onnx: str
    onnxruntime: str
    numpy: str


class MemoryUse(_Frozen):
    """The memory budget and what followed from it (``settings`` holds the batch sizes used)."""

    budget_mib: float
    image_forward_mib: float = Field(description="Forward values of one image, with their autograd graph.")
    batch_size: int
    internal_batch_size: int
    recorded_forward_mib: float = Field(
        description="The trained model's forward passes kept for the stages to start from."
    )
    device_peak_mib: float | None = Field(
        None, description="Peak memory allocated on a GPU; None on the CPU."
    )


class SkippedMethod(_Frozen):
    """A default method left out because it is not defined on this model."""

    name: str
    reason: str


class AuditReport(_Frozen):
    schema_version: Literal["2.6"] = SCHEMA_VERSION
    created_at: datetime
    model: ArtifactInfo
    conversion: ConversionCheck
    layers: list[LayerInfo] = Field(description="Layers with parameters, in forward execution order.")
    probes: ProbeInfo
    settings: AuditSettings
    target_policy_note: str
    device: str
    memory: MemoryUse | None = None
    versions: Versions
    methods: list[MethodResult]
    skipped_methods: list[SkippedMethod] = Field(
        default_factory=list,
        description="Methods of the default set not audited because they are not defined on this model, "
        "with the reason (methods named in the settings are never skipped: they refuse the audit).",
    )
    data_randomization: DataRandomizationInfo | None = None
    notes: list[str] = Field(default_factory=list)
    seconds: float
    image_passes: ImagePasses | None = Field(
        None,
        description="Every method's passes and the class predictions (training the data test's twins "
        "and controls, the conversion check and input invariance's logit check are not counted). Null "
        "before schema 2.6.",
    )
