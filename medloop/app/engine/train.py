"""The Qt-free segmentation training loop shared by ``medloop train``, the bundled models and the
GUI's retraining.

``train_segmentation`` draws random (augmented) patches from whole images, optimises with Adam
under a learning-rate schedule, validates Dice per class on whole images, keeps the best weights,
checkpoints atomically after every epoch and can resume exactly. It is deterministic for a seed
on the CPU: torch, the numpy generator that drives patch sampling and augmentation, and the
checkpointed states of all of them.

Stopping. ``should_stop()`` is polled before every step. By default the loop then returns a
result with ``stopped=True`` and the model holding the best weights so far (the current ones when
nothing has been validated yet); with ``raise_on_stop=True`` it raises
:class:`~medloop.app.engine.jobs.JobCancelled` instead (a cancellation, not an error). With
``copy_model=True`` a deep copy is trained (``result.model``) and the caller's model is never
touched, which is what the GUI wants: swap the weights in on success, change nothing on cancel.
"""

from __future__ import annotations

import copy
import inspect
import math
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence, Union

import numpy as np

from medloop.app.engine.augment import AugmentConfig, foreground_indices, random_augmented_patch, random_patch
from medloop.app.engine.jobs import JobCancelled
from medloop.app.engine.metrics import dice_per_class
from medloop.app.errors import ImageMismatchError, MedloopError

if TYPE_CHECKING:
    import torch

LossFn = Callable[["torch.Tensor", "torch.Tensor", "torch.Tensor"], "torch.Tensor"]
"""``loss_fn(logits (N, K, *s), target (N, *s) int64, weight (N, *s) float) -> scalar tensor``."""

Pair = Union[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, "np.ndarray | None"]]
"""(image (C, *spatial) float32, label (*spatial) int64[, weight map (*spatial) or None])."""

SCHEDULES = ("constant", "cosine", "poly", "plateau")
CHECKPOINT_FORMAT = "medloop-train-checkpoint-1"

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
    # A loss callable ``loss_fn(logits, target, weight)``, or a name: "cross_entropy" is built in;
    # other names are resolved by the caller (pass the callable as ``loss_fn``).
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


# ------------------------------------------------------------------------------------ losses


def weighted_cross_entropy(logits: "torch.Tensor", target: "torch.Tensor", weight: "torch.Tensor") -> "torch.Tensor":
    """Cross-entropy averaged over voxels with their weights; weight-0 voxels give no gradient.

    A one-channel output is a binary sigmoid model (target 0/1). Targets of weight-0 voxels may
    hold anything >= -1 (they are clamped to a valid class, then multiplied by 0).
    """
    import torch.nn.functional as F

    if logits.shape[1] == 1:
        binary = target.clamp(0, 1).to(logits.dtype)
        per_voxel = F.binary_cross_entropy_with_logits(logits[:, 0], binary, reduction="none")
    else:
        per_voxel = F.cross_entropy(logits, target.clamp_min(0), reduction="none")
    return (per_voxel * weight).sum() / weight.sum().clamp_min(1e-8)


def resolve_loss(loss: Union[str, LossFn, None]) -> LossFn:
    """The callable for a loss setting (a callable passes through)."""
    if callable(loss):
        return loss
    if loss in (None, "cross_entropy", "ce"):
        return weighted_cross_entropy
    raise MedloopError(f"unknown loss {loss!r}; use 'cross_entropy' or pass a loss function")


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


def _call_progress(progress: Callable[..., None] | None) -> Callable[[int, int, dict[str, Any]], None]:
    """Accept both ``progress(done, total, info)`` and jobs' ``progress(done, total)``."""
    if progress is None:
        return lambda done, total, info: None
    try:
        inspect.signature(progress).bind(0, 0, {})
        return progress
    except TypeError:
        return lambda done, total, info: progress(done, total)
    except ValueError:  # no introspectable signature (some builtins): assume the full form
        return progress


def _state_copy(model: Any) -> dict[str, Any]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


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


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename: never a partial file."""
    import torch

    from medloop.app.io.atomic import atomic_target

    path = Path(path)
    try:
        with atomic_target(path) as tmp:
            torch.save(state, tmp)
    except OSError as exc:
        raise MedloopError(
            f"cannot write checkpoint {path}: {exc.strerror or exc}; check the folder is writable"
        ) from exc


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A checkpoint written by :func:`train_segmentation` (tensors on the CPU)."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or foreign file: the user's to fix, not a bug
        raise MedloopError(f"cannot read training checkpoint {path}: {exc}; delete it to start afresh") from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise MedloopError(f"{path} is not a medloop training checkpoint; delete it or choose another path")
    return state


# ------------------------------------------------------------------------------------- train


def train_segmentation(
    model: Any,
    train_pairs: Sequence[Pair],
    val_pairs: Sequence[Pair] | None,
    config: TrainConfig,
    loss_fn: LossFn | None = None,
    progress: Callable[..., None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    checkpoint_path: str | os.PathLike[str] | None = None,
    resume: bool = False,
    predict_val: Callable[[Any, np.ndarray], np.ndarray] | None = None,
    *,
    copy_model: bool = False,
    raise_on_stop: bool = False,
) -> TrainResult:
    """Train ``model`` (logits ``(N, K, *spatial)`` from ``(N, C, *spatial)``) on random patches.

    Args:
        train_pairs / val_pairs: (image (C, *spatial) float32, label (*spatial) int, optional
            weight map); weight-0 voxels teach nothing and are not scored.
        loss_fn: ``loss_fn(logits, target, weight) -> scalar``; default: ``config.loss`` resolved.
        progress: ``progress(done_steps, total_steps, info)`` after every step (info: epoch, step,
            loss, lr) and after every epoch (info adds event="epoch", train_loss, val_dice,
            val_mean_dice, best_val_dice, seconds). A two-argument callable also works.
        should_stop: polled before every step; see the module docstring for what stopping does.
        checkpoint_path: written atomically after every epoch (model, optimizer, scheduler,
            random states, history, best weights).
        resume: continue from ``checkpoint_path`` if it exists (same seed and settings give
            the same weights as an uninterrupted run); a missing file starts afresh. A run
            stopped mid-epoch resumes from the last completed epoch.
        predict_val: ``predict_val(model, image) -> label map`` (e.g. tiled inference); default:
            one whole-image forward padded to ``model.divisible_by``.
        copy_model: train a deep copy (``result.model``) and leave ``model`` untouched.
        raise_on_stop: raise :class:`JobCancelled` when stopped instead of returning.

    The model ends in its original train/eval mode, holding the best validated weights (the
    last ones without validation data).
    """
    import torch

    from medloop.app.engine.devices import channels_last_on_cpu, choose_device

    train = _prepare_pairs(train_pairs, "training")
    if not train:
        raise MedloopError("no training data: give at least one (image, label) pair")
    val = _prepare_pairs(val_pairs or [], "validation")
    ndim = train[0][1].ndim
    if any(lab.ndim != ndim for _, lab, _ in train + val):
        raise MedloopError("training and validation images mix 2-D and 3-D; use one kind")
    divisible_by = int(getattr(model, "divisible_by", 1) or 1)
    if config.patch_size is None:
        largest = np.max([lab.shape for _, lab, _ in train], axis=0)
        config = replace(config, patch_size=tuple(int(-(-n // divisible_by) * divisible_by) for n in largest))
    patch = _check_config(config, ndim, {img.shape[0] for img, _, _ in train + val}, divisible_by)
    loss = resolve_loss(loss_fn if loss_fn is not None else config.loss)
    report = _call_progress(progress)
    fg = [foreground_indices(lab, w) for _, lab, w in train]

    if copy_model:
        model = copy.deepcopy(model)
    device = choose_device(config.device)
    model.to(device)
    was_training = model.training
    old_threads = torch.get_num_threads()
    if config.num_threads is not None:
        torch.set_num_threads(int(config.num_threads))
    rng_devices = [device.index or 0] if device.type == "cuda" else []
    try:
        # fork_rng: seeding for this run must not change the caller's global torch RNG.
        # Channels-last on the CPU: 3-D steps 1.3x faster, 2-D 0.98-1.2x (benchmarks/bench_cpu_layout.py).
        with torch.random.fork_rng(devices=rng_devices), channels_last_on_cpu(model):
            return _run(
                model, train, val, fg, patch, config, loss, report, should_stop,
                checkpoint_path, resume, predict_val, divisible_by, device, raise_on_stop,
            )
    finally:
        model.train(was_training)
        torch.set_num_threads(old_threads)


def _run(
    model: Any,
    train: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]],
    val: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]],
    fg: list[np.ndarray],
    patch: tuple[int, ...],
    config: TrainConfig,
    loss_fn: LossFn,
    report: Callable[[int, int, dict[str, Any]], None],
    should_stop: Callable[[], bool] | None,
    checkpoint_path: str | os.PathLike[str] | None,
    resume: bool,
    predict_val: Callable[[Any, np.ndarray], np.ndarray] | None,
    divisible_by: int,
    device: "torch.device",
    raise_on_stop: bool,
) -> TrainResult:
    import torch

    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = _make_scheduler(optimizer, config, bool(val))
    rng = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)
    history: list[dict[str, Any]] = []
    best_state, best_epoch, best_dice, bad_validations, start_epoch = _state_copy(model), 0, float("nan"), 0, 0
    done = 0  # optimizer steps taken, over all epochs

    if resume and checkpoint_path is not None and Path(checkpoint_path).exists():
        ck = load_checkpoint(checkpoint_path)
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        scheduler.load_state_dict(ck["scheduler"])
        rng.bit_generator.state = ck["numpy_rng"]
        torch.set_rng_state(ck["torch_rng"])
        if device.type == "cuda" and ck.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(ck["cuda_rng"], device)
        history = list(ck["history"])
        best_state, best_epoch, best_dice = ck["best_state"], int(ck["best_epoch"]), float(ck["best_val_dice"])
        bad_validations, start_epoch, done = int(ck["bad_validations"]), int(ck["epoch"]), int(ck["steps_done"])

    total = config.epochs * config.steps_per_epoch
    result = TrainResult(model, best_state, best_epoch, best_dice, history, start_epoch, done)
    aug = config.augment
    model.train()

    def finish(stopped: bool = False, early: bool = False) -> TrainResult:
        result.best_state, result.best_epoch, result.best_val_dice = best_state, best_epoch, best_dice
        result.stopped, result.early_stopped, result.steps_done = stopped, early, done
        model.load_state_dict(best_state)
        if stopped and raise_on_stop:
            raise JobCancelled(f"training stopped after {done} steps")
        return result

    for epoch in range(start_epoch, config.epochs):
        t0 = time.perf_counter()
        losses: list[float] = []
        for step in range(config.steps_per_epoch):
            if should_stop is not None and should_stop():
                if best_epoch == 0:
                    best_state = _state_copy(model)  # nothing validated: keep what was learnt
                return finish(stopped=True)
            images, labels, weights = [], [], []
            for _ in range(config.batch_size):
                i = int(rng.integers(len(train)))
                image, label, weight = train[i]
                if aug is None:
                    s = random_patch(
                        image, label, patch, rng, config.foreground_fraction, weight=weight, fg_indices=fg[i]
                    )
                else:
                    s = random_augmented_patch(
                        image, label, patch, rng, aug, config.foreground_fraction, weight=weight, fg_indices=fg[i]
                    )
                images.append(s.image)
                labels.append(s.label)
                weights.append(s.weight)
            x = torch.from_numpy(np.stack(images)).to(device)
            y = torch.from_numpy(np.stack(labels).astype(np.int64, copy=False)).to(device)
            w = torch.from_numpy(np.stack(weights)).to(device)

            optimizer.zero_grad(set_to_none=True)
            value = loss_fn(model(x), y, w)
            if not torch.isfinite(value):
                raise MedloopError(
                    f"training diverged at epoch {epoch + 1}, step {step + 1} (loss {float(value.detach())}); "
                    "lower the learning rate or check the labels"
                )
            value.backward()
            optimizer.step()
            lr = optimizer.param_groups[0]["lr"]
            if config.schedule != "plateau":
                scheduler.step()
            done += 1
            losses.append(float(value.detach()))
            report(done, total, {"event": "step", "epoch": epoch + 1, "step": step + 1, "loss": losses[-1], "lr": lr})

        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "train_loss": float(np.mean(losses)),
            "lr": float(lr),
            "val_dice": None,
            "val_mean_dice": None,
        }
        validate = bool(val) and ((epoch + 1) % config.val_every == 0 or epoch + 1 == config.epochs)
        if validate:
            dice = _validate(model, val, config, divisible_by, predict_val)
            mean = float(np.mean(list(dice.values()))) if dice else float("nan")
            record["val_dice"], record["val_mean_dice"] = dice, mean
            if best_epoch == 0 or mean > best_dice:
                best_state, best_epoch, best_dice, bad_validations = _state_copy(model), epoch + 1, mean, 0
            else:
                bad_validations += 1
            if config.schedule == "plateau":
                scheduler.step(mean)
        elif not val:
            best_state, best_epoch = _state_copy(model), epoch + 1
            if config.schedule == "plateau":
                scheduler.step(record["train_loss"])
        record["seconds"] = time.perf_counter() - t0
        history.append(record)
        result.epochs_done = epoch + 1

        if checkpoint_path is not None:
            state = {
                "format": CHECKPOINT_FORMAT,
                "epoch": epoch + 1,
                "steps_done": done,
                "model": _state_copy(model),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "numpy_rng": rng.bit_generator.state,
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                "history": history,
                "best_state": best_state,
                "best_epoch": best_epoch,
                "best_val_dice": best_dice,
                "bad_validations": bad_validations,
                "seed": config.seed,
            }
            save_checkpoint(state, checkpoint_path)
        report(done, total, {"event": "epoch", **record, "best_val_dice": best_dice})
        if validate and config.early_stop_patience is not None and bad_validations >= config.early_stop_patience:
            return finish(early=True)
    return finish()
