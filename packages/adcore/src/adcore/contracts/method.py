"""The method contract: ``fit`` on a support set, ``predict`` scores and maps in batches.

Methods receive uint8 images already decoded and resized by the host's loader, on the run's
device; they normalise on the device themselves (``Preprocessing.normalize``), so loader
workers never touch floats and every method sees exactly the preprocessing it declared.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from ad_runtime.preprocessing import Preprocessing
from adcore.infra.errors import PluginError
from adcore.infra.precision import Precision, backbone_autocast, check_precision, fp32_region

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclass(frozen=True)
class Runtime:
    """Where and how a method runs; chosen by the host, passed to the factory.

    Raises ``ConfigError`` when ``device`` cannot run ``precision``
    (see :mod:`adcore.infra.precision`).
    """

    device: str = "cpu"
    precision: Precision = "fp32"
    seed: int = 0

    def __post_init__(self) -> None:
        check_precision(self.device, self.precision)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The host's context around ``fit``/``predict``: autocast off, results in fp32.

        Reduced precision applies only where a method opens :meth:`backbone_autocast`.
        """
        return fp32_region(self.device, self.precision)

    def backbone_autocast(self) -> contextlib.AbstractContextManager[Any]:
        """bf16/fp16 autocast for a backbone forward as ``precision`` asks (fp32: no-op).

        Methods cast what leaves the backbone back with ``.float()``: scores, maps and
        nearest-neighbour search stay fp32.
        """
        return backbone_autocast(self.device, self.precision)


@dataclass
class FitContext:
    """What ``fit`` gets: the category's class name and its support images in batches.

    ``batches`` yields uint8 [b,3,H,W] tensors on the device and may be empty (zero-shot);
    iterate it once. Fields are only ever added, so older methods keep working.
    """

    category: str
    class_name: str
    num_images: int
    batches: Iterable[torch.Tensor] = field(default_factory=list)
    show_progress: bool = False


@dataclass
class Prediction:
    """Output of ``predict``: ``scores`` [B] and ``maps`` [B,H,W] at the geometry's size."""

    scores: torch.Tensor
    maps: torch.Tensor


class Method(abc.ABC):
    """An anomaly detector. Implementations keep the algorithm in plain ``nn.Module``s."""

    geometry: Preprocessing  # the authors' resize, filter, crop and normalisation

    @abc.abstractmethod
    def fit(self, context: FitContext) -> None:
        """Prepare for one category: text prompts, memory banks, reference features."""

    @abc.abstractmethod
    def predict(self, images: torch.Tensor) -> Prediction:
        """uint8 [B,3,H,W] on the device -> scores [B], maps [B,H,W]. Called under no_grad."""

    @abc.abstractmethod
    def modules(self) -> dict[str, nn.Module]:
        """The networks, for parameter and FLOP counting."""

    @abc.abstractmethod
    def backbone_forward(self, images: torch.Tensor) -> Any:
        """A bare forward pass of the backbone on normalised images: the speed floor."""

    @abc.abstractmethod
    def weights_identity(self) -> dict[str, Any]:
        """What weights the run used, as :class:`adcore.toolkit.weights.WeightsIdentity` fields:
        built with :func:`adcore.toolkit.weights.backbone_identity` (and
        :func:`~adcore.toolkit.weights.with_trained_parts` for methods with trained parts)."""

    def memory_bank_bytes(self) -> int:
        """Bytes held as fitted state beyond the parameters (memory bank, references)."""
        return 0

    def fitted_state(self) -> dict[str, Any]:
        """Everything ``predict`` needs after ``fit``, as tensors and plain values."""
        raise PluginError(f"{type(self).__name__} cannot save its fitted state.")

    def load_fitted_state(self, state: dict[str, Any]) -> None:
        """Restore what ``fitted_state`` returned, so ``predict`` works without ``fit``."""
        raise PluginError(f"{type(self).__name__} cannot load a fitted state.")


class TransductiveMethod(Method):
    """A method that scores a test set jointly, each image against the others (MuSc).

    The host hands over the whole set at once: ``predict_set`` receives the set's uint8
    ``[b,3,S,S]`` batches on the device, one after another, and returns one
    :class:`Prediction` for all ``size`` images in the order they came. The host keeps no
    image beyond the batch being handed over; what the method keeps (features, not images)
    grows with the set, and its docstring says how. ``ad eval`` passes a category's test
    split, ``ad predict`` the images it is given; ``predict(images)`` scores ``images`` as a
    set of their own. Declare :attr:`Capability.TRANSDUCTIVE` in the record.
    """

    @abc.abstractmethod
    def predict_set(self, batches: Iterable[torch.Tensor], size: int) -> Prediction:
        """uint8 batches [b,3,S,S] of one set of ``size`` images -> scores [size],
        maps [size,S,S], in the order of the batches. Called under no_grad."""

    def predict(self, images: torch.Tensor) -> Prediction:
        """``images`` [B,3,S,S] scored as a set of their own."""
        return self.predict_set([images], len(images))


class ExportableMethod(Method):
    """A method whose fitted prediction is one torch module, for ``ad export`` (ONNX).

    ``export_module`` returns an ``nn.Module`` in eval mode that maps normalised float32
    images ``[B,3,S,S]`` (``geometry.normalize``'s output: resized, cropped, mean/std
    applied, RGB) to ``(scores [B], maps [B,S,S])``: the raw outputs of ``predict``, with
    no threshold and no score scale. The fitted state (memory bank, text features) is held
    as buffers, so the exported graph carries it as constants. Only tensor operations
    ``torch.export`` traces (no faiss, numpy or Python branches on values), with the batch
    size free. ``adcore.testing.check_method`` checks that its outputs equal ``predict``'s.
    Declare :attr:`Capability.EXPORTABLE` in the record.
    """

    @abc.abstractmethod
    def export_module(self) -> nn.Module:
        """The fitted prediction: normalised float32 [B,3,S,S] -> (scores [B], maps [B,S,S])."""


class TrainingSettings(BaseModel):
    """Optimiser and schedule of ``ad train``; each trainable method gives its paper's."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = 2
    learning_rate: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    batch_size: int = 8
    seed: int = 0
    keep_epochs: tuple[int, ...] = Field(
        (), description="epochs whose checkpoint is also kept as checkpoint_epoch<N>.safetensors"
    )


@dataclass
class TrainingBatch:
    """One training batch on the device: ``images`` uint8 [B,3,H,W], ``masks`` float [B,H,W]
    (in {0, 1}, or in [0, 1] where the geometry's ``mask_filter`` is not nearest: the soft
    mask), ``labels`` long [B], and each image's ``categories`` and ``class_names``."""

    images: torch.Tensor
    masks: torch.Tensor
    labels: torch.Tensor
    categories: tuple[str, ...] = ()
    class_names: tuple[str, ...] = ()


@dataclass
class TrainingPhase:
    """One full pass over the training data within an epoch, driven by the method.

    ``step`` returns the batch's losses (``"loss"`` is back-propagated) and ``optimizer``
    steps after it; ``begin`` runs before the pass (e.g. to freeze the other phases' parts).
    The host keeps data order, mixed precision, logging, checkpoints and resume.
    """

    name: str
    optimizer: torch.optim.Optimizer
    step: Callable[[TrainingBatch], dict[str, torch.Tensor]]
    begin: Callable[[], None] | None = None


class TrainableMethod(Method):
    """A method with trained parts (prompts, adaptors) that ``ad train`` optimises.

    The method owns its optimisers and steps (``training_phases``); by default one phase
    runs Adam with ``training_settings`` over ``trainable_parameters`` on ``training_loss``.
    """

    @abc.abstractmethod
    def training_settings(self) -> TrainingSettings:
        """Defaults from the paper, overridden by the method's config."""

    @abc.abstractmethod
    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters the optimiser updates; everything else stays frozen."""

    @abc.abstractmethod
    def training_loss(
        self, images: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """uint8 [B,3,H,W], float [B,H,W], long [B] -> losses; ``"loss"`` is optimised."""

    def training_phases(self, settings: TrainingSettings) -> list[TrainingPhase]:
        """The phases of one epoch, in order, each with its own optimiser."""
        import torch

        optimizer = torch.optim.Adam(
            list(self.trainable_parameters()), lr=settings.learning_rate, betas=settings.betas
        )

        def step(batch: TrainingBatch) -> dict[str, torch.Tensor]:
            return self.training_loss(batch.images, batch.masks, batch.labels)

        return [TrainingPhase("train", optimizer, step)]

    @abc.abstractmethod
    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The trained tensors only, for a small checkpoint."""

    @abc.abstractmethod
    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load a checkpoint written from ``trainable_state``."""
