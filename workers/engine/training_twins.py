"""The data randomization test's models: a random-label twin and a true-label control.

Either the client supplies them (any number of twins, and optionally of controls), or the engine trains
them from a labelled training set: the audited architecture, re-initialized, trained on permuted labels
until it has memorized them (the twins, each with its own seed and permutation), and copies trained on
the true labels with other seeds (the controls). The controls measure how much maps differ from
retraining alone, a floor the original paper lacked; several twins show how much one twin is chance.
Every input is checked before any training starts.
"""

import copy
import io
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from workers.core.audit_settings import (
    AuditSettings,
    Layout,
    Optimizer,
    Preprocessing,
    ReinitScheme,
    TrainingRecipe,
)
from workers.core.errors import AuditCancelled, AuditInputError, ProbeError
from workers.core.probes import MAX_TRAINING_IMAGES, ProbeSet, check_label_range, load_probes
from workers.core.report import (
    ArtifactInfo,
    ConversionCheck,
    DataRandomizationInfo,
    EpochRecord,
    TrainingDataInfo,
    TrainingRun,
)
from workers.engine.archive import MapArchive
from workers.engine.artifacts import load_model
from workers.engine.layers import Layer, layer_seed, reinitialize
from workers.engine.verification import verify_conversion

MIN_TRAINING_IMAGES = 50
MIN_FIT_IMAGES = 40
MIN_HELDOUT_IMAGES = 10
ARCHIVE_FOLDER = "models"
TRAINING_SEED_TAG = 0x7A1D  # keeps training seeds apart from the layers' re-initialization seeds


class TrainingBudgetExceeded(AuditInputError):
    """A model did not reach the required training accuracy within the recipe's epochs or time."""


@dataclass(frozen=True)
class DataTestInputs:
    """What the client sent for the data randomization test: a twin, or data to train one."""

    twins: tuple[Path, ...] = ()
    controls: tuple[Path, ...] = ()
    training_data: Path | None = None

    def __post_init__(self) -> None:
        if self.controls and not self.twins:
            raise AuditInputError(
                "true-label controls go with client-supplied twins (--twin); with training data the "
                "engine trains the controls itself"
            )
        if bool(self.twins) == (self.training_data is not None):
            raise AuditInputError(
                "the data randomization test needs either random-label twins or training data"
            )


@dataclass(frozen=True)
class TrainedModel:
    model: nn.Module
    run: TrainingRun
    onnx: bytes


def load_training_set(
    path: Path,
    preprocessing: Preprocessing,
    expected_shape: tuple[int | None, ...],
    classes: int,
    model_layout: Layout = Layout.nchw,
) -> ProbeSet:
    """Read and check a labelled training set (.npz with x and y, or a zip of class folders), arrays in the
    model's own layout unless the settings say."""
    if path.suffix.lower() in (".zip", ".npz"):
        data = load_probes(
            path, preprocessing, expected_shape, MAX_TRAINING_IMAGES, model_layout=model_layout
        )
    else:
        raise ProbeError(
            f"{path.name}: training data must be an .npz with x and y, or a zip of class folders"
        )
    if data.labels is None:
        raise ProbeError(f"{path.name}: training data needs labels (a 'y' array, or images in class folders)")
    if len(data.labels) < MIN_TRAINING_IMAGES:
        raise ProbeError(
            f"{path.name}: {len(data.labels)} training images; at least {MIN_TRAINING_IMAGES} are needed"
        )
    check_label_range(data.labels, classes, path.name)
    present = np.unique(data.labels)
    if len(present) < 2:
        raise ProbeError(
            f"{path.name}: every training image has label {present[0]}; at least two classes are needed"
        )
    return data


def split_holdout(count: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng([seed, 0xDA7A]).permutation(count)
    heldout = max(1, round(count * fraction))
    return np.sort(order[heldout:]), np.sort(order[:heldout])


def train_models(
    model: nn.Module,
    layers: list[Layer],
    data: ProbeSet,
    settings: AuditSettings,
    device: torch.device,
    indices: range,
    on_epoch: Callable[[str], None],
    should_cancel: Callable[[], bool],
) -> tuple[list[TrainedModel], list[TrainedModel], int]:
    """Train random-label twin ``k`` and true-label control ``k`` for each ``k`` in ``indices``; each has
    its own seed and a twin its own permutation, so model ``k`` is the same however many are trained.
    Returns them and the held-out count."""
    recipe = settings.training
    train, heldout = split_holdout(len(data.labels), recipe.holdout_fraction, settings.seed)
    x = torch.from_numpy(data.x).to(device)
    labels = torch.from_numpy(data.labels).to(device)
    trained: dict[str, list[TrainedModel]] = {"random_label_twin": [], "true_label_control": []}
    for k in indices:
        permutation = np.random.default_rng([settings.seed, 0x5EED, k]).permutation(len(train))
        roles = (
            ("random_label_twin", labels[train][torch.from_numpy(permutation).to(device)]),
            ("true_label_control", labels[train]),
        )
        seeds = np.random.SeedSequence([settings.seed, TRAINING_SEED_TAG, k]).generate_state(2)
        for (role, fit_labels), seed in zip(roles, seeds, strict=True):
            name = f"{role.replace('_', ' ')} {k + 1}"
            trained[role].append(
                _train(
                    model,
                    layers,
                    x,
                    (train, fit_labels),
                    (heldout, labels[heldout]),
                    recipe,
                    int(seed),
                    (role, k),
                    lambda text, name=name: on_epoch(f"training {name}: {text}"),
                    should_cancel,
                )
            )
    return trained["random_label_twin"], trained["true_label_control"], len(heldout)


def _train(
    architecture: nn.Module,
    layers: list[Layer],
    x: Tensor,
    fit: tuple[np.ndarray, Tensor],
    holdout: tuple[np.ndarray, Tensor],
    recipe: TrainingRecipe,
    seed: int,
    role_and_index: tuple[str, int],
    on_epoch: Callable[[str], None],
    should_cancel: Callable[[], bool],
) -> TrainedModel:
    started = time.perf_counter()
    role, index = role_and_index
    model = copy.deepcopy(architecture)
    modules = dict(model.named_modules())
    for layer in layers:
        reinitialize(modules[layer.path], ReinitScheme.default, 0.0, layer_seed(seed, layer))
    model.requires_grad_(True)
    optimizer = _optimizer(model, recipe)
    generator = torch.Generator().manual_seed(seed)
    fit_x, fit_y = x[torch.from_numpy(fit[0]).to(x.device)], fit[1]
    curve: list[EpochRecord] = []
    accuracy = 0.0
    for epoch in range(1, recipe.max_epochs + 1):
        model.train()
        total_loss = 0.0
        for batch in _batches(torch.randperm(len(fit_x), generator=generator), recipe.batch_size):
            batch = batch.to(x.device)
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(fit_x[batch]), fit_y[batch])
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * len(batch)
        accuracy = _accuracy(model, fit_x, fit_y, recipe.batch_size)
        curve.append(EpochRecord(epoch=epoch, loss=total_loss / len(fit_x), train_accuracy=accuracy))
        on_epoch(f"epoch {epoch}, train accuracy {accuracy:.3f}")
        if should_cancel():
            raise AuditCancelled
        if accuracy >= recipe.memorize_accuracy or time.perf_counter() - started > recipe.max_seconds:
            break
    if accuracy < recipe.memorize_accuracy:
        raise TrainingBudgetExceeded(
            f"the {role.replace('_', ' ')} reached {accuracy:.1%} training accuracy after "
            f"{len(curve)} epochs and {time.perf_counter() - started:.0f} s; it must reach "
            f"{recipe.memorize_accuracy:.0%}. Raise "
            "max_epochs, max_seconds or the learning rate, or train on fewer images"
        )
    model.eval().requires_grad_(False)
    heldout_x = x[torch.from_numpy(holdout[0]).to(x.device)]
    heldout_accuracy = _accuracy(model, heldout_x, holdout[1], recipe.batch_size)
    chance = float(np.bincount(holdout[1].cpu().numpy()).max() / len(holdout[1]))
    _check_generalization(role, heldout_accuracy, chance, len(holdout[1]))
    run = TrainingRun(
        role=role,  # type: ignore[arg-type]
        index=index,
        seed=seed,
        epochs=len(curve),
        seconds=time.perf_counter() - started,
        train_accuracy=accuracy,
        heldout_accuracy=heldout_accuracy,
        chance_accuracy=chance,
        curve=curve,
        archive_path=f"{ARCHIVE_FOLDER}/{role}_{index}.onnx",
    )
    return TrainedModel(model, run, _to_onnx(model, x[:2]))


def _check_generalization(role: str, accuracy: float, chance: float, count: int) -> None:
    """The twin must know nothing of the true labels and the control must know them, beyond noise.

    The bound is the majority-class rate plus three binomial standard errors over the held-out images.
    """
    bound = chance + 3 * np.sqrt(chance * (1 - chance) / count)
    if role == "random_label_twin" and accuracy > bound:
        raise AuditInputError(
            f"the random-label twin scores {accuracy:.1%} on held-out true labels, above chance "
            f"({chance:.1%} + 3 standard errors = {bound:.1%}): it learned the task, so it is no "
            "random-label twin"
        )
    if role == "true_label_control" and accuracy <= bound:
        raise AuditInputError(
            f"the true-label control scores only {accuracy:.1%} on held-out images (chance {chance:.1%}): "
            "it did not learn the task, so it cannot measure the retrain floor; adjust the training recipe"
        )


def _batches(order: Tensor, size: int) -> list[Tensor]:
    """Mini-batches; a last batch of one image joins the one before (BatchNorm cannot train on one)."""
    batches = list(order.split(size))
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches[-2:] = [torch.cat(batches[-2:])]
    return batches


def _optimizer(model: nn.Module, recipe: TrainingRecipe) -> torch.optim.Optimizer:
    if recipe.optimizer is Optimizer.sgd:
        return torch.optim.SGD(model.parameters(), lr=recipe.learning_rate, momentum=0.9)
    return torch.optim.Adam(model.parameters(), lr=recipe.learning_rate)


@torch.no_grad()
def _accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int) -> float:
    model.eval()
    predicted = torch.cat([model(batch).argmax(dim=1) for batch in x.split(batch_size)])
    return float((predicted == y).float().mean())


def _to_onnx(model: nn.Module, example: Tensor) -> bytes:
    """The trained model as a single-file ONNX (opset 17, dynamic batch), for the client to inspect."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            copy.deepcopy(model).cpu(),
            (example.cpu(),),
            buffer,
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    return buffer.getvalue()


@dataclass(frozen=True)
class TwinModels:
    twins: list[nn.Module]
    controls: list[nn.Module]
    info: DataRandomizationInfo


class TwinPool:
    """The data test's twins and controls, shared by every method.

    Client models are what they are. Trained ones come in batches of ``training.models`` twins and as
    many controls, the first before any map, more only when a method's verdict is still undecided, up
    to ``training.max_models`` of each (docs/decisions/0008).
    """

    def __init__(
        self,
        setup: "DataSetup",
        archive: MapArchive,
        report_progress: Callable[[str, int], None],
        should_cancel: Callable[[], bool],
    ) -> None:
        self.setup, self.archive = setup, archive
        self.report_progress, self.should_cancel = report_progress, should_cancel
        self._twins: list[nn.Module] = []
        self._controls: list[nn.Module] = []
        self._runs: list[TrainingRun] = []
        self._heldout = 0
        if setup.client is not None:
            self._twins, self._controls = list(setup.client.twins), list(setup.client.controls)

    def start(self) -> None:
        """Train the first batch (of trained twins), before any map is computed."""
        if self.setup.client is None and not self._twins:
            self._grow(self.initial)

    @property
    def initial(self) -> int:
        return (
            len(self.setup.client.twins)
            if self.setup.client is not None
            else self.setup.settings.training.models
        )

    @property
    def limit(self) -> int:
        """The most twins the test may compare with."""
        if self.setup.client is not None:
            return len(self.setup.client.twins)
        recipe = self.setup.settings.training
        return max(recipe.models, recipe.max_models)

    def planned_units(self) -> int:
        """Progress units of training: one per twin and control the test may train."""
        return 0 if self.setup.client is not None else 2 * self.limit

    def skip_untrained(self) -> None:
        """Every verdict is in: the twins and controls left untrained are work not done."""
        untrained = self.planned_units() - len(self._runs)  # client twins: none planned, none trained
        if untrained:
            self.report_progress("data: no more twins needed", untrained)

    def twin(self, index: int) -> nn.Module:
        if index >= len(self._twins):
            self._grow(index + 1)
        return self._twins[index]

    def controls(self, count: int) -> list[nn.Module]:
        """The first ``count`` controls, or every client control."""
        if self.setup.client is not None:
            return self._controls
        if count > len(self._controls):
            self._grow(count)
        return self._controls[:count]

    def _grow(self, count: int) -> None:
        """Train batches of twins and controls until there are at least ``count`` of each."""
        setup = self.setup
        assert setup.training is not None
        batch = setup.settings.training.models
        start = len(self._twins)
        end = min(self.limit, start + batch * -(-(count - start) // batch))
        twins, controls, self._heldout = train_models(
            setup.architecture,
            setup.layers,
            setup.training,
            setup.settings,
            setup.device,
            range(start, end),
            lambda text: self.report_progress(text, 0),
            self.should_cancel,
        )
        for trained in (*twins, *controls):
            self.archive.add_bytes(trained.run.archive_path, trained.onnx)
            self.report_progress(f"trained {trained.run.role.replace('_', ' ')} {trained.run.index + 1}", 1)
        self._twins += [t.model for t in twins]
        self._controls += [c.model for c in controls]
        self._runs += [trained.run for trained in (*twins, *controls)]

    @property
    def info(self) -> DataRandomizationInfo:
        if self.setup.client is not None:
            return self.setup.client.info
        data = self.setup.training
        assert data is not None
        return DataRandomizationInfo(
            source="trained",
            training_data=TrainingDataInfo(
                filename=data.source,
                sha256=data.sha256,
                count=len(data.labels),
                classes=len(np.unique(data.labels)),
                heldout=self._heldout,
            ),
            training=sorted(self._runs, key=lambda run: (run.role, run.index)),
        )


@dataclass
class DataSetup:
    """The data test's inputs, checked before any map is computed or any model trained."""

    settings: AuditSettings
    architecture: nn.Module
    layers: list[Layer]
    x: Tensor
    device: torch.device
    client: TwinModels | None = None
    training: ProbeSet | None = None

    @classmethod
    def prepare(
        cls,
        inputs: DataTestInputs,
        settings: AuditSettings,
        architecture: nn.Module,
        layers: list[Layer],
        probes: ProbeSet,
        x: Tensor,
        classes: int,
        check_methods: Callable[[nn.Module], None],
        audited_sha256: str,
    ) -> "DataSetup":
        """``x`` is ``probes.x`` on the audit's device; ``classes`` the audited model's class count."""
        setup = cls(settings, architecture, layers, x, x.device)
        if inputs.training_data is not None:
            expected = (None, *probes.x.shape[1:])
            layout = Layout(getattr(architecture, "input_layout", Layout.nchw))
            setup.training = load_training_set(
                inputs.training_data, settings.preprocessing, expected, classes, layout
            )
            recipe = settings.training
            fit, heldout = split_holdout(len(setup.training.x), recipe.holdout_fraction, settings.seed)
            if len(fit) < MIN_FIT_IMAGES or len(heldout) < MIN_HELDOUT_IMAGES:
                raise ProbeError(
                    f"{inputs.training_data.name}: holdout_fraction {recipe.holdout_fraction} leaves "
                    f"{len(fit)} images to train on and {len(heldout)} held out; at least "
                    f"{MIN_FIT_IMAGES} and {MIN_HELDOUT_IMAGES} are needed"
                )
            return setup
        twins = [setup._client_model(path, probes, classes, check_methods) for path in inputs.twins]
        controls = [setup._client_model(path, probes, classes, check_methods) for path in inputs.controls]
        digests = [audited_sha256] + [artifact.sha256 for _, artifact, _ in (*twins, *controls)]
        if len(set(digests)) < len(digests):
            raise AuditInputError(
                "the audited model, the twins and the controls must be different files: a model counted "
                "twice would hide the spread between models that the verdict rests on"
            )
        info = DataRandomizationInfo(
            source="client",
            twins=[artifact for _, artifact, _ in twins],
            twin_conversions=[check for _, _, check in twins],
            controls=[artifact for _, artifact, _ in controls],
            control_conversions=[check for _, _, check in controls],
        )
        setup.client = TwinModels([m for m, _, _ in twins], [m for m, _, _ in controls], info)
        return setup

    def _client_model(
        self, path: Path, probes: ProbeSet, classes: int, check_methods: Callable[[nn.Module], None]
    ) -> tuple[nn.Module, ArtifactInfo, ConversionCheck]:
        loaded = load_model(
            path, example_input=probes.x[:2], output=self.settings.output, layout=self.settings.model_layout
        )
        check = verify_conversion(
            loaded,
            probes.x,
            atol=self.settings.conversion_atol,
            rtol=self.settings.conversion_rtol,
            batch_size=self.settings.batch_size,
        )
        module = loaded.module.to(self.device).eval().requires_grad_(False)
        with torch.no_grad():
            own_classes = module(self.x[:1]).shape[1]
        if own_classes != classes:
            raise AuditInputError(f"{path.name} has {own_classes} classes; the audited model has {classes}")
        check_methods(module)
        return module, loaded.artifact, check
