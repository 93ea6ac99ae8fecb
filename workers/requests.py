"""What a client submits to run an audit: artifacts by sha256 plus the engine's settings. Torch-free."""

from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from workers.engine.settings import AuditSettings, RandomizationTest

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
        default_factory=list, description="Data test: random-label twins (model artifacts), any number."
    )
    controls: list[Sha256] = Field(
        default_factory=list, description="Data test, with twins: true-label control models, any number."
    )
    training_data: Sha256 | None = Field(
        None, description="Data test: a training set (/v1/training-sets) to train the twin and control."
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
