"""The image-level lesion classifier (Gupta et al.'s baseline and pseudo-label filter, CPU scale).

Gupta et al. fine-tuned a dilated residual net at 1024 x 512; the CPU-scale version (spec §1) is a
4-conv CNN: four blocks (3 x 3 conv, BatchNorm, ReLU, 2 x 2 max-pool; widths w, 2w, 4w, 8w), then
global average *and* max pooling (a small lesion is a local event; max pooling keeps it) and one
linear layer giving one logit. It is fully convolutional, so any input of at least 16 x 16 px works.

Training is a step of the shared loop (:func:`medloop.app.engine.loop.train`): Adam with weight
decay, binary cross-entropy, batches drawn with a fixed fraction of positives (the few lesion images
are over-sampled) and light linear-transform augmentation (flips, shifts of a few pixels with edge
padding). With validation data the kept state is the one with the best validation ROC AUC.
:class:`ClassifierScorer` turns a trained model into the :class:`~.synthesize.Scorer` the
synthesis filter and the batch augmenter take.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from medloop.app.engine.loop import LoopConfig, LoopResult, SeededSource, StepAt, TrainStep, train
from medloop.plugins.lesions.checks import LesionInputError

ARCHITECTURE = "medloop.plugins.lesions.classifier:LesionClassifier"
WEIGHTS_PREFIX = "classifier."
MIN_SIDE = 16  # four 2 x 2 poolings


class LesionClassifier(nn.Module):
    """Four conv blocks + global average/max pooling + linear: (B, 1, H, W) → (B,) logits."""

    def __init__(self, width: int = 8, in_channels: int = 1) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for i in range(4):
            out = width * 2**i
            layers += [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
            channels = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(2 * channels, 1)
        self.width = int(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        pooled = torch.cat([f.mean(dim=(2, 3)), f.amax(dim=(2, 3))], dim=1)
        return self.head(pooled)[:, 0]


@dataclass(frozen=True)
class ClassifierConfig:
    """``width`` of the first block; ``epochs`` x ``steps_per_epoch`` steps of ``batch`` images;
    Adam ``lr`` and ``weight_decay``; ``positive_fraction`` of each batch drawn from the positives
    (balanced sampling; None: uniform); ``augment`` flips and shifts up to ``max_shift`` px; ``seed``."""

    width: int = 8
    epochs: int = 6
    steps_per_epoch: int = 40
    batch: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-4
    positive_fraction: float | None = 0.5
    augment: bool = True
    max_shift: int = 4
    seed: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def checked(self) -> ClassifierConfig:
        for name in ("width", "epochs", "steps_per_epoch", "batch"):
            if int(getattr(self, name)) < 1:
                raise LesionInputError(f"classifier setting {name} = {getattr(self, name)}; give at least 1")
        if not self.lr > 0 or self.weight_decay < 0:
            raise LesionInputError(f"classifier lr {self.lr} / weight decay {self.weight_decay}; give lr > 0, decay >= 0")
        if self.positive_fraction is not None and not 0 < self.positive_fraction < 1:
            raise LesionInputError(f"positive fraction {self.positive_fraction}; choose a value in (0, 1) or None")
        return self


def _stack(images: Sequence[np.ndarray] | np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(images, dtype=np.float32)
    if arr.ndim != 3 or min(arr.shape[1:]) < MIN_SIDE:
        raise LesionInputError(f"{name} have shape {arr.shape}; give (N, H, W) greyscale images of at least {MIN_SIDE} px")
    if not np.isfinite(arr).all():
        raise LesionInputError(f"{name} hold NaN or infinite values; replace them first")
    return arr


class ClassifierSampler(SeededSource):
    """``sampler() -> (x (B, 1, H, W), y (B,))``: seeded, balanced and augmented batches."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, config: ClassifierConfig) -> None:
        self.images, self.labels, self.config = images, labels.astype(bool), config
        self.pos, self.neg = np.flatnonzero(self.labels), np.flatnonzero(~self.labels)
        self.rng = np.random.default_rng(config.seed)

    def indices(self) -> np.ndarray:
        c = self.config
        if c.positive_fraction is None:
            return self.rng.integers(0, len(self.labels), c.batch)
        n_pos = int(self.rng.binomial(c.batch, c.positive_fraction))
        return np.r_[self.rng.choice(self.pos, n_pos), self.rng.choice(self.neg, c.batch - n_pos)]

    def augment(self, image: np.ndarray) -> np.ndarray:
        if self.rng.random() < 0.5:
            image = image[:, ::-1]
        if self.rng.random() < 0.5:
            image = image[::-1, :]
        m = self.config.max_shift
        if m > 0:
            dy, dx = self.rng.integers(-m, m + 1, 2)
            padded = np.pad(image, m, mode="edge")
            image = padded[m + dy : m + dy + image.shape[0], m + dx : m + dx + image.shape[1]]
        return image

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.indices()
        batch = [self.augment(self.images[i]) if self.config.augment else self.images[i] for i in idx]
        x = torch.from_numpy(np.ascontiguousarray(np.stack(batch)[:, None], dtype=np.float32))
        return x, torch.from_numpy(self.labels[idx].astype(np.float32))



class ClassifierStep(TrainStep):
    """One Adam step on binary cross-entropy."""

    def __init__(self, model: LesionClassifier, config: ClassifierConfig) -> None:
        self.model = model
        self.optimiser = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.loss = nn.BCEWithLogitsLoss()

    def __call__(self, batch: tuple[torch.Tensor, torch.Tensor], at: StepAt) -> dict[str, float]:
        x, y = batch
        self.optimiser.zero_grad(set_to_none=True)
        loss = self.loss(self.model(x), y)
        loss.backward()
        self.optimiser.step()
        return {"loss": float(loss.detach())}

    def state_dict(self) -> dict[str, Any]:
        return {"optimiser": self.optimiser.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimiser.load_state_dict(state["optimiser"])


def predict_proba(model: LesionClassifier, images: Sequence[np.ndarray] | np.ndarray, batch: int = 128) -> np.ndarray:
    """Lesion probabilities (N,) float64 of (N, H, W) images in [0, 1]; the model's mode is restored."""
    arr = _stack(images, "images")
    was_training = model.training
    model.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(arr), batch):
            out.append(torch.sigmoid(model(torch.from_numpy(arr[i : i + batch, None]))).numpy())
    model.train(was_training)
    return np.concatenate(out).astype(np.float64)


def train_classifier(
    images: Sequence[np.ndarray] | np.ndarray, labels: Sequence[int] | np.ndarray, config: ClassifierConfig = ClassifierConfig(),
    progress: Callable[..., None] | None = None, should_stop: Callable[[], bool] | None = None,
    validation: tuple[Any, Any] | None = None,
) -> LoopResult:
    """Train a :class:`LesionClassifier` on (N, H, W) images in [0, 1] with 0/1 labels through the
    shared loop; with ``validation=(images, labels)`` the kept state has the best validation AUC
    (``best_score``). The returned model is in eval mode."""
    from medloop.plugins.lesions.metrics import roc_auc

    config = config.checked()
    x = _stack(images, "training images")
    y = np.asarray(labels).astype(bool).ravel()
    if len(y) != len(x):
        raise LesionInputError(f"{len(x)} training images but {len(y)} labels; give one label per image")
    if y.all() or not y.any():
        raise LesionInputError(f"training labels hold {int(y.sum())} lesion and {int((~y).sum())} normal images; give both")
    validate = None
    if validation is not None:
        vx, vy = _stack(validation[0], "validation images"), np.asarray(validation[1]).astype(bool).ravel()

        def validate(model: LesionClassifier) -> dict[str, float]:
            return {"val_auc": roc_auc(vy, predict_proba(model, vx))}

    torch.manual_seed(config.seed)
    model = LesionClassifier(config.width)
    loop = LoopConfig(epochs=config.epochs, steps_per_epoch=config.steps_per_epoch, seed=config.seed,
                      monitor="val_auc", best_name="best_val_auc")
    result = train(model, ClassifierSampler(x, y, config), ClassifierStep(model, config), loop,
                   progress=progress, should_stop=should_stop, validate=validate)
    result.model.eval()
    return result


class ClassifierScorer:
    """A trained classifier as the synthesis filter's :class:`~.synthesize.Scorer`: images of
    another size are resized (bilinear) to ``size`` (H, W), the size it was trained at."""

    def __init__(self, model: LesionClassifier, size: tuple[int, int], name: str = "lesion-classifier") -> None:
        self.model, self.size, self.name = model, (int(size[0]), int(size[1])), name

    def score(self, images: np.ndarray) -> np.ndarray:
        arr = np.asarray(images, dtype=np.float32)
        if arr.ndim == 2:
            arr = arr[None]
        if arr.shape[1:] != self.size:
            from skimage.transform import resize

            shrink = arr.shape[1] > self.size[0] or arr.shape[2] > self.size[1]
            arr = np.stack([resize(a, self.size, order=1, mode="edge", anti_aliasing=shrink, preserve_range=True)
                            for a in arr]).astype(np.float32)
        return predict_proba(self.model, arr)


def load_classifier(state: dict[str, Any], width: int = 8) -> LesionClassifier:
    """A model from a state dict whose keys carry the ``classifier.`` prefix (or none)."""
    model = LesionClassifier(width)
    model.load_state_dict({k.removeprefix(WEIGHTS_PREFIX): v for k, v in state.items()})
    return model.eval()
