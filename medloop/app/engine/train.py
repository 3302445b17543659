"""Segmentation training: a step for the one loop (:mod:`medloop.app.engine.loop`).

``train_segmentation`` draws random (augmented) patches from whole images (:class:`PatchSampler`,
the loop's data), optimises with Adam under a learning-rate schedule (:class:`SegmentationStep`),
validates Dice per class on whole images (:func:`segmentation_validator`), and lets the loop keep
the best weights, checkpoint atomically after every epoch and resume exactly. It is deterministic
for a seed on the CPU: torch, the numpy generator that drives patch sampling and augmentation, and
the checkpointed states of all of them.

Stopping. ``should_stop()`` is polled before every step. By default the run then returns a
result with ``stopped=True`` and the model holding the best weights so far (the current ones when
nothing has been validated yet); with ``raise_on_stop=True`` it raises
:class:`~medloop.app.engine.jobs.JobCancelled` instead (a cancellation, not an error). With
``copy_model=True`` a deep copy is trained (``result.model``) and the caller's model is never
touched, which is what the GUI wants: swap the weights in on success, change nothing on cancel.

Losses. ``loss_fn(logits, target, weight) -> scalar``; names (``TrainConfig.loss``) resolve
through the one loss table, :data:`medloop.app.engine.losses.LOSSES` (:func:`resolve_loss`).
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, Sequence, Union

import numpy as np

from medloop.app.engine.augment import AugmentConfig, foreground_indices, random_augmented_patch, random_patch
from medloop.app.engine.jobs import JobCancelled
from medloop.app.engine.loop import (
    CHECKPOINT_FORMAT,
    LoopConfig,
    StepAt,
    TrainStep,
    load_checkpoint,
    save_checkpoint,
    train,
)
from medloop.app.engine.metrics import dice_per_class
from medloop.app.errors import ImageMismatchError, MedloopError

if TYPE_CHECKING:
    import torch

__all__ = [
    "CHECKPOINT_FORMAT",
    "PatchSampler",
    "SegmentationOptions",
    "SegmentationStep",
    "TrainConfig",
    "TrainResult",
    "load_checkpoint",
    "predict_whole",
    "resolve_loss",
    "save_checkpoint",
    "segmentation_validator",
    "train",
    "train_segmentation",
]

LossFn = Callable[["torch.Tensor", "torch.Tensor", "torch.Tensor"], "torch.Tensor"]
"""``loss_fn(logits (N, K, *s), target (N, *s) int64, weight (N, *s) float) -> scalar tensor``."""

Pair = Union[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, "np.ndarray | None"]]
"""(image (C, *spatial) float32, label (*spatial) int64[, weight map (*spatial) or None])."""

SCHEDULES = ("constant", "cosine", "poly", "plateau")

# Training cancelled by ``should_stop``; the jobs module's class, so callers catch one type.
TrainingCancelled = JobCancelled


@dataclass
class TrainConfig:
    """Everything that shapes a training run (the data and the model are arguments)."""

    epochs: int = 10
    steps_per_epoch: int = 50
    batch_size: int = 8
    # Patch size per spatial axis; None: the largest training image (rounded up to the model's
    # ``divisible_by``), smaller images padded.
    patch_size: tuple[int, ...] | None = None
    lr: float = 1e-3
    weight_decay: float = 0.0
    # "constant", "cosine" or "poly" (per step, over all epochs), or "plateau" (halve the rate
    # after ``plateau_patience`` validations without improvement).
    schedule: str = "constant"
    plateau_patience: int = 3
    # A loss callable ``loss_fn(logits, target, weight)``, or a name in the one loss table
    # (medloop.app.engine.losses.LOSSES: "cross_entropy", "dice_ce", ...; see :func:`resolve_loss`).
    loss: Union[str, LossFn, None] = "cross_entropy"
    augment: AugmentConfig | None = None
    # Probability that a patch centres on a foreground voxel (label > 0 with weight > 0).
    foreground_fraction: float = 0.5
    seed: int = 0
    # torch threads during the call (restored afterwards); None leaves torch's setting alone.
    num_threads: int | None = None
    val_every: int = 1
    # Stop after this many validations without a better mean Dice; None: never.
    early_stop_patience: int | None = None
    # Classes scored by validation Dice; None: the model's output channels (2 for one channel).
    num_classes: int | None = None
    val_ignore_background: bool = True
    device: str = "auto"
    # Keep BatchNorm layers in eval mode (running statistics frozen): fine-tuning a BatchNorm model
    # on a few strokes must not re-estimate the statistics a whole training run settled.
    freeze_norm_stats: bool = False


@dataclass
class TrainResult:
    """What a run produced. ``model`` (the trained one: a copy with ``copy_model``) holds
    ``best_state``, also when the run was stopped or a cancel was raised."""

    model: Any
    best_state: dict[str, Any]
    best_epoch: int  # 1-based; 0 when no epoch finished
    best_val_dice: float  # mean Dice of the best validation; nan without validation
    history: list[dict[str, Any]] = field(default_factory=list)
    epochs_done: int = 0
    steps_done: int = 0
    stopped: bool = False  # should_stop() ended the run
    early_stopped: bool = False  # validation stopped improving


# ------------------------------------------------------------------------------ loss registry

def resolve_loss(loss: Union[str, LossFn, None]) -> LossFn:
    """The callable for a loss setting: a callable passes through, a name is looked up in the one
    loss table (:data:`medloop.app.engine.losses.LOSSES`; None: "cross_entropy")."""
    if callable(loss):
        return loss
    from medloop.app.engine.losses import loss_by_name

    return loss_by_name("cross_entropy" if loss is None else loss)


# ------------------------------------------------------------------------------- validation


def predict_whole(model: Any, image: np.ndarray, divisible_by: int = 1) -> tuple[np.ndarray, int]:
    """Label map of a whole image in one forward pass, and the number of classes the model scores.

    The image is padded (edge values) at the end of every axis to a multiple of
    ``divisible_by``; call under ``torch.inference_mode`` with the model in eval mode.
    """
    import torch

    device = next(iter(model.parameters())).device
    spatial = image.shape[1:]
    pad = [(0, 0)] + [(0, (-n) % divisible_by) for n in spatial]
    padded = np.pad(image, pad, mode="edge") if any(p for _, p in pad) else image
    x = torch.from_numpy(np.ascontiguousarray(padded, dtype=np.float32)).unsqueeze(0).to(device)
    logits = model(x)[0]
    crop = (slice(None),) + tuple(slice(0, n) for n in spatial)
    logits = logits[crop]
    if logits.shape[0] == 1:
        return (logits[0] > 0).to(torch.int64).cpu().numpy(), 2
    return logits.argmax(0).cpu().numpy(), int(logits.shape[0])


def _validate(
    model: Any,
    pairs: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]],
    config: TrainConfig,
    divisible_by: int,
    predict_val: Callable[[Any, np.ndarray], np.ndarray] | None,
) -> dict[int, float]:
    """Dice per class over all validation voxels pooled (weight-0 voxels not compared)."""
    import torch

    was_training = model.training
    model.eval()
    preds: list[np.ndarray] = []
    classes = config.num_classes
    try:
        with torch.inference_mode():
            for image, _, _ in pairs:
                if predict_val is not None:
                    preds.append(np.asarray(predict_val(model, image)))
                else:
                    pred, k = predict_whole(model, image, divisible_by)
                    preds.append(pred)
                    classes = classes or k
    finally:
        model.train(was_training)
    if classes is None:
        classes = max(2, max(int(max(p.max(), t.max())) + 1 for p, (_, t, _) in zip(preds, pairs)))
    # Pool voxels of every volume so small volumes do not count as much as large ones.
    pred_all = np.concatenate([p.ravel() for p in preds])
    truth_all = np.concatenate([t.ravel() for _, t, _ in pairs])
    masks = [np.ones(t.size, bool) if w is None else (w.ravel() > 0) for _, t, w in pairs]
    return dice_per_class(pred_all, truth_all, classes, config.val_ignore_background, np.concatenate(masks))


def segmentation_validator(
    pairs: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]],
    config: TrainConfig,
    divisible_by: int,
    predict_val: Callable[[Any, np.ndarray], np.ndarray] | None = None,
) -> Callable[[Any], dict[str, Any]]:
    """The loop's ``validate``: ``{"val_dice": {class: Dice}, "val_mean_dice": their mean}``."""

    def validate(model: Any) -> dict[str, Any]:
        dice = _validate(model, pairs, config, divisible_by, predict_val)
        mean = float(np.mean(list(dice.values()))) if dice else float("nan")
        return {"val_dice": dice, "val_mean_dice": mean}

    return validate


# ----------------------------------------------------------------------------------- helpers


def _prepare_pairs(pairs: Sequence[Pair], what: str) -> list[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    out = []
    for n, pair in enumerate(pairs):
        if len(pair) not in (2, 3):
            raise MedloopError(f"{what} pair {n} must be (image, label) or (image, label, weight)")
        image = np.ascontiguousarray(pair[0], dtype=np.float32)
        label = np.asarray(pair[1])
        weight = None if len(pair) == 2 or pair[2] is None else np.ascontiguousarray(pair[2], dtype=np.float32)
        if label.ndim not in (2, 3) or image.shape[1:] != label.shape:
            raise ImageMismatchError(
                f"{what} pair {n}: image {image.shape} must be (channels, *spatial) matching label "
                f"{label.shape} (2-D or 3-D); give the image a leading channel axis"
            )
        if not np.issubdtype(label.dtype, np.integer):
            raise MedloopError(f"{what} pair {n}: label dtype {label.dtype} is not an integer type")
        if weight is not None and weight.shape != label.shape:
            raise ImageMismatchError(f"{what} pair {n}: weight map {weight.shape} does not match label {label.shape}")
        if not np.isfinite(image).all():
            raise MedloopError(f"{what} pair {n}: the image has NaN or infinite values; fix or mask them first")
        out.append((image, label.astype(np.int64, copy=False), weight))
    return out


def _check_config(config: TrainConfig, ndim: int, channels: set[int], divisible_by: int) -> tuple[int, ...]:
    if config.schedule not in SCHEDULES:
        raise MedloopError(f"unknown schedule {config.schedule!r}; use one of {', '.join(SCHEDULES)}")
    for name in ("epochs", "steps_per_epoch", "batch_size", "val_every"):
        if int(getattr(config, name)) < 1:
            raise MedloopError(f"training setting {name} must be at least 1, got {getattr(config, name)}")
    if len(channels) != 1:
        raise MedloopError(f"training images have different channel counts {sorted(channels)}; use one")
    patch = tuple(int(p) for p in config.patch_size)  # type: ignore[union-attr]
    if len(patch) != ndim:
        raise MedloopError(f"patch size {patch} needs {ndim} values for {ndim}-D images")
    if any(p < 1 or p % divisible_by for p in patch):
        raise MedloopError(f"patch size {patch} must be positive multiples of {divisible_by} for this network")
    return patch


def _make_scheduler(optimizer: Any, config: TrainConfig, has_val: bool) -> Any:
    import torch

    total = config.epochs * config.steps_per_epoch
    if config.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max" if has_val else "min", factor=0.5, patience=config.plateau_patience
        )
    if config.schedule == "cosine":
        factor: Callable[[int], float] = lambda t: 0.5 * (1 + math.cos(math.pi * min(t, total) / total))
    elif config.schedule == "poly":
        factor = lambda t: (1 - min(t, total) / total) ** 0.9  # nnU-Net's exponent
    else:
        factor = lambda t: 1.0
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# ------------------------------------------------------------------------- data, step, options


class PatchSampler:
    """The loop's data: one batch ``(images, labels, weights)`` of random (augmented) patches per
    call, drawn by a numpy generator seeded with ``config.seed`` (checkpointed)."""

    def __init__(self, pairs: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]], patch: tuple[int, ...], config: TrainConfig):
        self.pairs, self.patch, self.config = pairs, patch, config
        self.fg = [foreground_indices(lab, w) for _, lab, w in pairs]
        self.rng = np.random.default_rng(config.seed)

    def __call__(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        config, aug, rng = self.config, self.config.augment, self.rng
        images, labels, weights = [], [], []
        for _ in range(config.batch_size):
            i = int(rng.integers(len(self.pairs)))
            image, label, weight = self.pairs[i]
            if aug is None:
                s = random_patch(
                    image, label, self.patch, rng, config.foreground_fraction, weight=weight, fg_indices=self.fg[i]
                )
            else:
                s = random_augmented_patch(
                    image, label, self.patch, rng, aug, config.foreground_fraction, weight=weight, fg_indices=self.fg[i]
                )
            images.append(s.image)
            labels.append(s.label)
            weights.append(s.weight)
        return np.stack(images), np.stack(labels).astype(np.int64, copy=False), np.stack(weights)

    def state_dict(self) -> dict[str, Any]:
        return {"numpy_rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["numpy_rng"]


def freeze_batch_norm(model: Any) -> int:
    """Put every BatchNorm layer of ``model`` in eval mode (its running statistics stop moving; its
    affine weights still train); returns how many there are."""
    import torch

    layers = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in layers:
        m.eval()
    return len(layers)


class SegmentationStep(TrainStep):
    """One Adam step of ``loss_fn(model(x), y, w)`` on a :class:`PatchSampler` batch, then the
    learning-rate schedule. Subclasses change the loss through :meth:`compute_loss` (which sees
    the input batch, e.g. to run a second network on it)."""

    def __init__(self, model: Any, loss_fn: LossFn, config: TrainConfig, device: Any, has_val: bool) -> None:
        import torch

        self.model, self.loss_fn, self.config, self.device, self.has_val = model, loss_fn, config, device, has_val
        self.optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.scheduler = _make_scheduler(self.optimizer, config, has_val)

    def compute_loss(self, x: "torch.Tensor", y: "torch.Tensor", w: "torch.Tensor") -> "torch.Tensor":
        return self.loss_fn(self.model(x), y, w)

    def __call__(self, batch: tuple[np.ndarray, np.ndarray, np.ndarray], at: StepAt) -> dict[str, float]:
        import torch

        x, y, w = (torch.from_numpy(a).to(self.device) for a in batch)
        if self.config.freeze_norm_stats:
            freeze_batch_norm(self.model)
        self.optimizer.zero_grad(set_to_none=True)
        value = self.compute_loss(x, y, w)
        if not torch.isfinite(value):
            raise MedloopError(
                f"training diverged at epoch {at.epoch + 1}, step {at.index + 1} (loss {float(value.detach())}); "
                "lower the learning rate or check the labels"
            )
        value.backward()
        self.optimizer.step()
        lr = self.optimizer.param_groups[0]["lr"]
        if self.config.schedule != "plateau":
            self.scheduler.step()
        return {"loss": float(value.detach()), "lr": lr}

    def summarise(self, scalars: list[dict[str, float]]) -> dict[str, Any]:
        return {
            "train_loss": float(np.mean([s["loss"] for s in scalars])),
            "lr": float(scalars[-1]["lr"]),
            "val_dice": None,
            "val_mean_dice": None,
        }

    def end_epoch(self, record: dict[str, Any]) -> None:
        if self.config.schedule != "plateau":
            return
        if record["val_mean_dice"] is not None:
            self.scheduler.step(record["val_mean_dice"])
        elif not self.has_val:
            self.scheduler.step(record["train_loss"])

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])


@dataclass
class SegmentationOptions:
    """How :func:`train_segmentation` runs (``TrainConfig`` says what is trained)."""

    # ``progress(done_steps, total_steps, info)`` after every step (info: epoch, step, loss, lr)
    # and after every epoch (info adds event="epoch", train_loss, val_dice, val_mean_dice,
    # best_val_dice, seconds). A two-argument callable also works.
    progress: Callable[..., None] | None = None
    should_stop: Callable[[], bool] | None = None  # polled before every step (module docstring)
    # Written atomically after every epoch (model, optimizer, scheduler, random states, history,
    # best weights); ``resume`` continues from it if it exists (same seed and settings give the
    # same weights as an uninterrupted run; a run stopped mid-epoch resumes from its last epoch).
    checkpoint_path: str | os.PathLike[str] | None = None
    resume: bool = False
    # ``predict_val(model, image) -> label map`` (e.g. tiled inference); default: one
    # whole-image forward padded to ``model.divisible_by``.
    predict_val: Callable[[Any, np.ndarray], np.ndarray] | None = None
    copy_model: bool = False  # train a deep copy (``result.model``), leave ``model`` untouched
    raise_on_stop: bool = False  # raise JobCancelled when stopped instead of returning
    # ``make_step(model, loss_fn, config, device, has_val)``: a SegmentationStep (subclass) to use.
    make_step: Callable[..., SegmentationStep] | None = None
    # ``on_epoch(model, record, improved)`` after each epoch's checkpoint (e.g. a versioned save).
    on_epoch: Callable[[Any, dict[str, Any], bool], None] | None = None
    # The loop's data instead of a PatchSampler over ``train_pairs`` (e.g. a bank of synthetic
    # volumes that refreshes itself, :class:`medloop.app.engine.synth.RefreshingSliceBank`);
    # ``train_pairs`` then only fix the dimensionality and channels.
    sampler: Any = None
    # ``validate(model) -> {"val_mean_dice": score, ...}`` instead of the Dice on ``val_pairs``
    # (e.g. held-out strokes plus a signal on the unannotated pixels); its keys go to the history.
    validate: Callable[[Any], dict[str, Any]] | None = None


# ------------------------------------------------------------------------------------- train


def train_segmentation(
    model: Any,
    train_pairs: Sequence[Pair],
    val_pairs: Sequence[Pair] | None,
    config: TrainConfig,
    loss_fn: LossFn | None = None,
    options: SegmentationOptions | None = None,
    **changes: Any,
) -> TrainResult:
    """Train ``model`` (logits ``(N, K, *spatial)`` from ``(N, C, *spatial)``) on random patches.

    Args:
        train_pairs / val_pairs: (image (C, *spatial) float32, label (*spatial) int, optional
            weight map); weight-0 voxels teach nothing and are not scored.
        loss_fn: ``loss_fn(logits, target, weight) -> scalar``; default: ``config.loss`` resolved.
        options: a :class:`SegmentationOptions`; ``changes`` (its field names: ``progress``,
            ``should_stop``, ``checkpoint_path``, ``resume``, ``predict_val``, ``copy_model``,
            ``raise_on_stop``, ``make_step``, ``on_epoch``) override its fields.

    The model ends in its original train/eval mode, holding the best validated weights (the
    last ones without validation data).
    """
    import torch

    from medloop.app.engine.devices import channels_last_on_cpu, choose_device

    opts = replace(options or SegmentationOptions(), **changes)
    train_set, val, patch, config = _prepare(model, train_pairs, val_pairs, config)
    loss = resolve_loss(loss_fn if loss_fn is not None else config.loss)
    if opts.copy_model:
        model = copy.deepcopy(model)
    device = choose_device(config.device)
    model.to(device)
    was_training = model.training
    old_threads = torch.get_num_threads()
    if config.num_threads is not None:
        torch.set_num_threads(int(config.num_threads))
    try:
        # Channels-last on the CPU: 3-D steps 1.3x faster, 2-D 0.98-1.2x (benchmarks/bench_cpu_layout.py).
        with channels_last_on_cpu(model):
            has_val = bool(val) or opts.validate is not None
            step = (opts.make_step or SegmentationStep)(model, loss, config, device, has_val)
            divisible_by = int(getattr(model, "divisible_by", 1) or 1)
            validate = opts.validate or (segmentation_validator(val, config, divisible_by, opts.predict_val) if val else None)
            result = train(
                model, opts.sampler or PatchSampler(train_set, patch, config), step, _loop_config(config, opts),
                progress=opts.progress, should_stop=opts.should_stop, validate=validate, on_epoch=opts.on_epoch,
            )
    finally:
        model.train(was_training)
        torch.set_num_threads(old_threads)
    return TrainResult(
        result.model, result.best_state, result.best_epoch, result.best_score, result.history,
        result.epochs_done, result.steps_done, result.stopped, result.early_stopped,
    )


def _loop_config(config: TrainConfig, opts: SegmentationOptions) -> LoopConfig:
    return LoopConfig(
        epochs=config.epochs,
        steps_per_epoch=config.steps_per_epoch,
        seed=config.seed,
        val_every=config.val_every,
        early_stop_patience=config.early_stop_patience,
        monitor="val_mean_dice",
        best_name="best_val_dice",
        checkpoint=opts.checkpoint_path,
        resume=opts.resume,
        raise_on_stop=opts.raise_on_stop,
    )


def _prepare(
    model: Any, train_pairs: Sequence[Pair], val_pairs: Sequence[Pair] | None, config: TrainConfig
) -> tuple[list, list, tuple[int, ...], TrainConfig]:
    """Checked training and validation pairs, the patch size and the config (patch size filled)."""
    train_set = _prepare_pairs(train_pairs, "training")
    if not train_set:
        raise MedloopError("no training data: give at least one (image, label) pair")
    val = _prepare_pairs(val_pairs or [], "validation")
    ndim = train_set[0][1].ndim
    if any(lab.ndim != ndim for _, lab, _ in train_set + val):
        raise MedloopError("training and validation images mix 2-D and 3-D; use one kind")
    divisible_by = int(getattr(model, "divisible_by", 1) or 1)
    if config.patch_size is None:
        largest = np.max([lab.shape for _, lab, _ in train_set], axis=0)
        config = replace(config, patch_size=tuple(int(-(-n // divisible_by) * divisible_by) for n in largest))
    patch = _check_config(config, ndim, {img.shape[0] for img, _, _ in train_set + val}, divisible_by)
    return train_set, val, patch, config
