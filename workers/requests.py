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
    twin: Sha256 | None = Field(None, description="Data test: a random-label twin (a model artifact).")
    control: Sha256 | None = Field(None, description="Data test, with twin: a true-label control model.")
    training_data: Sha256 | None = Field(
        None, description="Data test: a training set (/v1/training-sets) to train the twin and control."
    )

    @model_validator(mode="after")
    def _data_test_inputs(self) -> "AuditRequest":
        wants_data_test = RandomizationTest.data in self.settings.tests
        has_inputs = self.twin is not None or self.training_data is not None
        if wants_data_test != has_inputs:
            raise ValueError(
                "the data randomization test (settings.tests contains 'data') needs a twin or training_data, "
                "and those are used only by it"
            )
        if self.twin is not None and self.training_data is not None:
            raise ValueError("give either a twin or training_data, not both")
        if self.control is not None and self.twin is None:
            raise ValueError("a control goes with a twin; with training_data the engine trains the control")
        return self

    @property
    def queue(self) -> WorkQueue:
        """GPU workers take jobs that ask for CUDA; 'auto' and 'cpu' jobs go to the CPU queue."""
        return WorkQueue.gpu if self.settings.device.startswith("cuda") else WorkQueue.cpu

    def artifacts(self) -> dict[str, tuple[str, ArtifactKind]]:
        """Each named artifact with the kind it must have been uploaded as."""
        kinds = {
            "model": ArtifactKind.model,
            "probes": ArtifactKind.probes,
            "twin": ArtifactKind.model,
            "control": ArtifactKind.model,
            "training_data": ArtifactKind.training_data,
        }
        return {field: (sha, kinds[field]) for field in kinds if (sha := getattr(self, field)) is not None}
