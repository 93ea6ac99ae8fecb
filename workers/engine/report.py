"""The audit report, defined once. Torch-free: the CLI, the workers and the HTTP service share it.

``AuditReport.model_json_schema()`` is exported to ``openapi/report.schema.json``; a test keeps the two
in step. Bump ``SCHEMA_VERSION`` on any change a reader would notice (major on breaking changes).
"""

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from workers.engine.settings import AuditSettings, Metric, RandomizationTest

SCHEMA_VERSION = "1.0"
REPORT_FILE = "report.json"  # names of the two outputs of an audit
ARCHIVE_FILE = "maps.zip"


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Summary(_Frozen):
    """A similarity over probe images. Undefined values (degenerate maps) are counted, never averaged."""

    mean: float | None = Field(description="Mean over images where the metric is defined; null if none is.")
    std: float | None = Field(description="Sample standard deviation (ddof=1).")
    ci95_low: float | None = Field(description="Lower bound of the 95% t-interval of the mean.")
    ci95_high: float | None = Field(description="Upper bound of the 95% t-interval of the mean.")
    n: int = Field(description="Images where the metric is defined.")
    n_undefined: int = Field(description="Images where it is not (a constant map has no rank correlation).")


MetricTable = dict[Metric, Summary]


class ArtifactInfo(_Frozen):
    filename: str
    sha256: str
    format: Literal["onnx", "torchscript", "torch_export"]
    opset: int | None = Field(None, description="ONNX opset the model was read at (after any conversion).")


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
        description="0 is the trained model; k > 0 randomizes k layers (cascading) or layer k."
    )
    label: str
    randomized_layers: list[str]
    similarity: MetricTable = Field(description="Trained-model map vs this stage's map of the same image.")
    cross_image_floor: MetricTable = Field(
        description="Trained-model map of one image vs this stage's map of another image: what similarity "
        "means when no image-specific content is shared (e.g. border patterns of unpadded convolutions)."
    )
    degenerate_maps: int = Field(
        description="Images whose map at this stage is constant (e.g. all-zero GradCAM)."
    )


class Verdict(_Frozen):
    passed: bool
    rule: str
    metric: Metric
    stage: int
    stage_label: str
    upper_bound: float | None
    threshold: float
    explanation: str


class TestResult(_Frozen):
    test: RandomizationTest
    stages: list[Stage]
    verdict: Verdict


class DataTestResult(_Frozen):
    """Trained-model maps against the random-label twin's (and the true-label control's) maps."""

    twin_similarity: MetricTable = Field(description="Trained model vs random-label twin, same image.")
    retrain_floor: MetricTable | None = Field(
        None,
        description="Trained model vs a second model trained on the true labels with another seed: how "
        "much maps differ from retraining alone.",
    )
    cross_image_floor: MetricTable = Field(
        description="Trained map of one image vs the twin's map of another."
    )
    degenerate_maps: int = Field(description="Images whose twin map is constant.")
    verdict: Verdict


class EpochRecord(_Frozen):
    epoch: int
    loss: float
    train_accuracy: float


class TrainingRun(_Frozen):
    role: Literal["random_label_twin", "true_label_control"]
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
        description="'client': the twin (and control) came with the request; 'trained': the engine "
        "trained them."
    )
    twin: ArtifactInfo | None = None
    twin_conversion: ConversionCheck | None = None
    control: ArtifactInfo | None = None
    control_conversion: ConversionCheck | None = None
    training_data: TrainingDataInfo | None = None
    training: list[TrainingRun] = Field(default_factory=list)


class MethodResult(_Frozen):
    name: str
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
    tests: list[TestResult]
    data_randomization: DataTestResult | None = None
    seconds: float


class Versions(_Frozen):
    engine: str
    python: str
    torch: str
    captum: str
    onnx: str
    onnxruntime: str
    numpy: str


class AuditReport(_Frozen):
    schema_version: Literal["1.0"] = SCHEMA_VERSION
    created_at: datetime
    model: ArtifactInfo
    conversion: ConversionCheck
    layers: list[LayerInfo] = Field(description="Layers with parameters, in forward execution order.")
    probes: ProbeInfo
    settings: AuditSettings
    target_policy_note: str
    device: str
    versions: Versions
    methods: list[MethodResult]
    data_randomization: DataRandomizationInfo | None = None
    notes: list[str] = Field(default_factory=list)
    seconds: float
