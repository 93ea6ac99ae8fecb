"""What a client submits to run an audit: artifacts by sha256 plus the engine's settings. Torch-free."""

from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, model_validator

from workers.core.audit_settings import AuditSettings, RandomizationTest

MAX_CLIENT_MODELS = 30  # twins, and controls, a client may send: each is a model on the worker's device
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of an uploaded artifact")]


class ArtifactKind(StrEnum):
    model = "model"  # ONNX, TorchScript or torch.export: the audited model, a twin or a control
    probes = "probes"  # .npy/.npz array or a zip of PNG/JPEG images
    training_data = "training_data"  # .npz with x and y, or a zip of class folders of images


class WorkQueue(StrEnum):
    cpu = "cpu"
    gpu = "gpu"


class AuditRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: Sha256 = Field(description="The audited model (an artifact uploaded to /v1/models).")
    probes: Sha256 = Field(description="Probe images (an artifact uploaded to /v1/probe-sets).")
    settings: AuditSettings = Field(default_factory=AuditSettings)
    twins: list[Sha256] = Field(
        default_factory=list,
        max_length=MAX_CLIENT_MODELS,
        description="Data test: random-label twins (model artifacts), each a different file.",
    )
    controls: list[Sha256] = Field(
        default_factory=list,
        max_length=MAX_CLIENT_MODELS,
        description="Data test, with twins: true-label control models, each a different file.",
    )

    @model_validator(mode="before")
    @classmethod
    def _single_twin_and_control(cls, data: object) -> object:
        """Requests stored before lists were accepted name one ``twin`` and one ``control``."""
        if isinstance(data, dict) and ("twin" in data or "control" in data):
            data = dict(data)
            for old, new in (("twin", "twins"), ("control", "controls")):
                value = data.pop(old, None)
                if value is not None:
                    data[new] = [*data.get(new, []), value]
        return data

    training_data: Sha256 | None = Field(
        None, description="Data test: a training set (/v1/training-sets) to train the twin and control."
    )
    callback_url: HttpUrl | None = Field(
        None,
        description="Called (POST, signed the Standard Webhooks way with the tenant's secret from "
        "/v1/webhook-secret) when the audit has ended; retried with backoff until it answers 2xx.",
    )

    @model_validator(mode="after")
    def _data_test_inputs(self) -> "AuditRequest":
        wants_data_test = RandomizationTest.data in self.settings.tests
        has_inputs = bool(self.twins) or self.training_data is not None
        if wants_data_test != has_inputs:
            raise ValueError(
                "the data randomization test (settings.tests contains 'data') needs twins or training_data, "
                "and those are used only by it"
            )
        if self.twins and self.training_data is not None:
            raise ValueError("give either twins or training_data, not both")
        if self.controls and not self.twins:
            raise ValueError("controls go with twins; with training_data the engine trains the controls")
        models = [self.model, *self.twins, *self.controls]
        if len(set(models)) < len(models):
            raise ValueError("the model, the twins and the controls must be different artifacts")
        return self

    @property
    def queue(self) -> WorkQueue:
        """GPU workers take jobs that ask for CUDA; 'auto' and 'cpu' jobs go to the CPU queue."""
        return WorkQueue.gpu if self.settings.device.startswith("cuda") else WorkQueue.cpu

    def artifacts(self) -> dict[str, tuple[str, ArtifactKind]]:
        """Each artifact under its role ("twin_0", "control_1", ...) with the kind it must have been
        uploaded as."""
        named = {
            "model": (self.model, ArtifactKind.model),
            "probes": (self.probes, ArtifactKind.probes),
            **{f"twin_{k}": (sha, ArtifactKind.model) for k, sha in enumerate(self.twins)},
            **{f"control_{k}": (sha, ArtifactKind.model) for k, sha in enumerate(self.controls)},
        }
        if self.training_data is not None:
            named["training_data"] = (self.training_data, ArtifactKind.training_data)
        return named
