"""The one training loop: epochs, progress, cancel, checkpoints and resume, curves, best state.

Every trainer in medloop supplies a *step* and runs it through :func:`train`: segmentation
(:class:`~medloop.app.engine.train.SegmentationStep`), the weak-label fine-tunes (the same step
with their own losses), and any method whose update is not "one loss, one optimiser": a GAN step
owns a generator and a discriminator optimiser, an RL step collects a rollout and makes several
PPO passes over it. The loop does not care what a step does; it owns everything around it:

* ``config.epochs`` x ``config.steps_per_epoch`` calls ``step(batch, at)``, each returning a dict
  of scalars (e.g. ``{"loss": 0.3, "lr": 1e-3}``); ``at`` (:class:`StepAt`) says where the run is.
* ``progress(done, total, info)`` after every step (``info``: ``event="step"``, epoch, step and the
  step's scalars) and after every epoch (``event="epoch"``, the epoch's record and the best score
  under ``config.best_name``). A two-argument ``progress(done, total)`` works too.
* ``should_stop()`` polled before every step: the run then returns ``stopped=True`` or, with
  ``config.raise_on_stop``, raises :class:`~medloop.app.engine.jobs.JobCancelled`. Either way the
  model holds the best state so far and the last checkpoint stays loadable.
* a checkpoint after every epoch (atomic): the model, the step's state (optimisers, schedulers,
  anything it keeps), the data source's state, torch's random state, the history and the best
  state. ``config.resume`` continues from it; the same seed and settings give the same tensors as
  an uninterrupted run (a run stopped mid-epoch resumes from its last finished epoch).
* the history (one record per epoch: the step's summary of its scalars, validation metrics,
  seconds), best-state keeping on ``config.monitor`` and early stopping, and an ``on_epoch`` hook
  (versioned saves, live curves).

The run is seeded (``torch.manual_seed(config.seed)``) inside ``torch.random.fork_rng``: the
caller's global torch random state is unchanged afterwards.
"""

from __future__ import annotations

import inspect
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from medloop.app.engine.jobs import JobCancelled
from medloop.app.errors import MedloopError

__all__ = [
    "CHECKPOINT_FORMAT",
    "LoopConfig",
    "LoopResult",
    "Step",
    "SeededSource",
    "StepAt",
    "TrainStep",
    "load_checkpoint",
    "save_checkpoint",
    "summarise_scalars",
    "train",
]

CHECKPOINT_FORMAT = "medloop-train-checkpoint-2"


@dataclass(frozen=True)
class StepAt:
    """Where a step runs: ``epoch`` and ``index`` (within the epoch) are 0-based; ``done`` steps
    finished before this one (over all epochs) out of ``total``."""

    epoch: int
    index: int
    done: int
    total: int


class Step(Protocol):
    """What :func:`train` calls. Only ``__call__`` is required; the loop uses the other methods
    when a step has them (``state_dict``/``load_state_dict`` are needed for checkpoints)."""

    def __call__(self, batch: Any, at: StepAt) -> dict[str, float]: ...


class SeededSource:
    """Mixin of a data source that draws from ``self.rng`` (a numpy Generator): the loop's
    checkpoints save and restore the generator's state, so a resumed run draws the same batches."""

    rng: np.random.Generator

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]


class TrainStep:
    """Convenience base class for steps: no state, the default epoch summary, no epoch hook."""

    def __call__(self, batch: Any, at: StepAt) -> dict[str, float]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """Everything besides the model's weights needed to resume exactly (optimisers, ...)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def summarise(self, scalars: list[dict[str, float]]) -> dict[str, Any]:
        """An epoch's record from the scalars its steps returned."""
        return summarise_scalars(scalars)

    def end_epoch(self, record: dict[str, Any]) -> None:
        """Called once per epoch with its record (validation metrics included), before the
        checkpoint: e.g. a reduce-on-plateau scheduler steps here."""


def summarise_scalars(scalars: list[dict[str, float]]) -> dict[str, Any]:
    """``train_<key>``: the epoch mean of every scalar; ``lr``: its last value."""
    keys: list[str] = []
    for s in scalars:
        keys += [k for k in s if k not in keys]
    out: dict[str, Any] = {}
    for key in keys:
        values = [float(s[key]) for s in scalars if key in s]
        if key == "lr":
            out["lr"] = values[-1]
        else:
            out[f"train_{key}"] = float(np.mean(values))
    return out


@dataclass
class LoopConfig:
    """How long to run and what to keep; the step holds the method's own settings."""

    epochs: int = 1
    steps_per_epoch: int = 1
    # torch.manual_seed for the run (inside fork_rng); None leaves torch's random state alone.
    seed: int | None = 0
    val_every: int = 1  # validate every n-th epoch and after the last
    early_stop_patience: int | None = None  # validations without a better score; None: never
    monitor: str = "val_score"  # the key of validate()'s result that picks the best state
    maximize: bool = True
    best_name: str = "best_score"  # the best score's key in epoch progress reports
    checkpoint: str | os.PathLike[str] | None = None  # written atomically after every epoch
    resume: bool = False  # continue from ``checkpoint`` if it exists
    raise_on_stop: bool = False  # should_stop raises JobCancelled instead of returning


@dataclass
class LoopResult:
    """What a run produced. ``model`` holds ``best_state`` (also after a stop or a cancel)."""

    model: Any
    best_state: dict[str, Any]
    best_epoch: int  # 1-based; 0 when no epoch finished
    best_score: float  # nan without validation
    history: list[dict[str, Any]] = field(default_factory=list)
    epochs_done: int = 0
    steps_done: int = 0
    stopped: bool = False  # should_stop() ended the run
    early_stopped: bool = False  # validation stopped improving


@dataclass
class _Run:
    """The loop's own mutable state (what a checkpoint restores)."""

    history: list[dict[str, Any]]
    best_state: dict[str, Any]
    best_epoch: int = 0
    best_score: float = float("nan")
    bad_validations: int = 0
    epoch: int = 0  # epochs finished
    done: int = 0  # steps finished


# ------------------------------------------------------------------------------ checkpoints


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename: never a partial file."""
    from medloop.app.io.atomic import atomic_torch_save

    path = Path(path)
    try:
        atomic_torch_save(state, path, suffix=".tmp")
    except OSError as exc:
        raise MedloopError(
            f"cannot write checkpoint {path}: {exc.strerror or exc}; check the folder is writable"
        ) from exc


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A checkpoint written by :func:`train` (tensors on the CPU, nothing unpickled)."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or foreign file: the user's to fix, not a bug
        raise MedloopError(f"cannot read training checkpoint {path}: {exc}; delete it to start afresh") from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise MedloopError(f"{path} is not a medloop training checkpoint; delete it or choose another path")
    return state


def state_copy(model: Any) -> dict[str, Any]:
    """A detached CPU copy of ``model``'s state dict."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _cuda_devices(model: Any) -> list[int]:
    return sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})


def _checkpoint(model: Any, step: Any, data: Any, run: _Run, config: LoopConfig) -> dict[str, Any]:
    import torch

    return {
        "format": CHECKPOINT_FORMAT,
        "epoch": run.epoch,
        "steps_done": run.done,
        "seed": config.seed,
        "model": state_copy(model),
        "step": step.state_dict(),
        "data": data.state_dict() if hasattr(data, "state_dict") else None,
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": [torch.cuda.get_rng_state(i) for i in _cuda_devices(model)],
        "history": run.history,
        "best_state": run.best_state,
        "best_epoch": run.best_epoch,
        "best_score": run.best_score,
        "bad_validations": run.bad_validations,
    }


def _start(model: Any, step: Any, data: Any, config: LoopConfig) -> _Run:
    """A fresh run, or the one in ``config.checkpoint`` when resuming."""
    import torch

    path = config.checkpoint
    if not (config.resume and path is not None and Path(path).exists()):
        return _Run([], state_copy(model))
    ck = load_checkpoint(path)
    model.load_state_dict(ck["model"])
    step.load_state_dict(ck["step"])
    if ck["data"] is not None and hasattr(data, "load_state_dict"):
        data.load_state_dict(ck["data"])
    torch.set_rng_state(ck["torch_rng"])
    for device, rng in zip(_cuda_devices(model), ck["cuda_rng"]):
        torch.cuda.set_rng_state(rng, device)
    return _Run(
        list(ck["history"]), ck["best_state"], int(ck["best_epoch"]), float(ck["best_score"]),
        int(ck["bad_validations"]), int(ck["epoch"]), int(ck["steps_done"]),
    )


# ----------------------------------------------------------------------------------- helpers


def call_progress(progress: Callable[..., None] | None) -> Callable[[int, int, dict[str, Any]], None]:
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


def _batches(data: Any) -> Callable[[StepAt], Any]:
    """The batch for each step (see :func:`train`'s ``data``)."""
    if data is None:
        return lambda at: None
    if callable(data):
        return lambda at: data()
    if isinstance(data, Sequence) and len(data):
        return lambda at: data[at.done % len(data)]
    raise MedloopError("training data must be a batch sampler (callable), a non-empty sequence of batches, or None")


def _check(config: LoopConfig, step: Any) -> None:
    for name in ("epochs", "steps_per_epoch", "val_every"):
        if int(getattr(config, name)) < 1:
            raise MedloopError(f"training setting {name} must be at least 1, got {getattr(config, name)}")
    if config.checkpoint is not None and not (hasattr(step, "state_dict") and hasattr(step, "load_state_dict")):
        raise MedloopError(
            f"checkpoints need the step's state: give {type(step).__name__} state_dict() and load_state_dict()"
        )


def _better(score: float, best: float, maximize: bool) -> bool:
    return score > best if maximize else score < best


# -------------------------------------------------------------------------------------- loop


def train(
    model: Any,
    data: Any,
    step: Step,
    config: LoopConfig,
    *,
    progress: Callable[..., None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    validate: Callable[[Any], dict[str, Any]] | None = None,
    on_epoch: Callable[[Any, dict[str, Any], bool], None] | None = None,
) -> LoopResult:
    """Run ``step`` over ``data`` for ``config.epochs`` x ``config.steps_per_epoch`` steps.

    Args:
        model: the ``torch.nn.Module`` being trained (several networks: an ``nn.ModuleDict``);
            checkpointed, kept at its best state and returned in that state, in its original
            train/eval mode. The step holds references to it (and to its optimisers).
        data: a sampler ``data() -> batch`` (its ``state_dict``/``load_state_dict``, if any, are
            checkpointed), a sequence of batches (cycled by step), or None (the step makes its
            own batches, e.g. RL rollouts).
        step: ``step(batch, at) -> {name: scalar}``; see :class:`Step` / :class:`TrainStep`.
        progress, should_stop: see the module docstring.
        validate: ``validate(model) -> metrics`` on validation epochs (``config.val_every``); the
            metrics join the epoch's record and ``metrics[config.monitor]`` picks the best state.
            Without it every epoch's state is the best so far.
        on_epoch: ``on_epoch(model, record, improved)`` after each epoch's checkpoint (versioned
            saves, curves); ``improved``: this epoch's state became the best.
    """
    import torch

    _check(config, step)
    loop = _Loop(model, _batches(data), data, step, config, call_progress(progress), should_stop, validate, on_epoch)
    was_training = model.training
    try:
        with torch.random.fork_rng(devices=_cuda_devices(model)):
            if config.seed is not None:
                torch.manual_seed(config.seed)
            loop.run = _start(model, step, data, config)
            model.train()
            return loop.epochs()
    finally:
        model.train(was_training)


@dataclass
class _Loop:
    model: Any
    next_batch: Callable[[StepAt], Any]
    data: Any
    step: Any
    config: LoopConfig
    report: Callable[[int, int, dict[str, Any]], None]
    should_stop: Callable[[], bool] | None
    validate: Callable[[Any], dict[str, Any]] | None
    on_epoch: Callable[[Any, dict[str, Any], bool], None] | None
    run: _Run = field(default_factory=lambda: _Run([], {}))

    def epochs(self) -> LoopResult:
        config, run = self.config, self.run
        total = config.epochs * config.steps_per_epoch
        summarise = getattr(self.step, "summarise", summarise_scalars)
        for epoch in range(run.epoch, config.epochs):
            t0 = time.perf_counter()
            scalars: list[dict[str, float]] = []
            for index in range(config.steps_per_epoch):
                if self.should_stop is not None and self.should_stop():
                    return self.finish(stopped=True)
                at = StepAt(epoch, index, run.done, total)
                out = self.step(self.next_batch(at), at)
                run.done += 1
                scalars.append(out)
                self.report(run.done, total, {"event": "step", "epoch": epoch + 1, "step": index + 1, **out})
            record = {"epoch": epoch + 1, **summarise(scalars)}
            validated, improved = self.score(record, epoch)
            if hasattr(self.step, "end_epoch"):
                self.step.end_epoch(record)
            record["seconds"] = time.perf_counter() - t0
            run.history.append(record)
            run.epoch = epoch + 1
            if config.checkpoint is not None:
                save_checkpoint(_checkpoint(self.model, self.step, self.data, run, config), config.checkpoint)
            self.report(run.done, total, {"event": "epoch", **record, config.best_name: run.best_score})
            if self.on_epoch is not None:
                self.on_epoch(self.model, record, improved)
            patience = config.early_stop_patience
            if validated and patience is not None and run.bad_validations >= patience:
                return self.finish(early=True)
        return self.finish()

    def score(self, record: dict[str, Any], epoch: int) -> tuple[bool, bool]:
        """Validate if due and update the best state; ``(validated, improved)``."""
        config, run = self.config, self.run
        if self.validate is None:
            run.best_state, run.best_epoch = state_copy(self.model), epoch + 1
            return False, True
        if (epoch + 1) % config.val_every and epoch + 1 != config.epochs:
            return False, False
        metrics = self.validate(self.model)
        record.update(metrics)
        score = float(metrics[config.monitor])
        if run.best_epoch == 0 or _better(score, run.best_score, config.maximize):
            run.best_state, run.best_epoch, run.best_score = state_copy(self.model), epoch + 1, score
            run.bad_validations = 0
            return True, True
        run.bad_validations += 1
        return True, False

    def finish(self, stopped: bool = False, early: bool = False) -> LoopResult:
        run = self.run
        if stopped and run.best_epoch == 0:
            run.best_state = state_copy(self.model)  # nothing kept yet: keep what was learnt
        self.model.load_state_dict(run.best_state)
        if stopped and self.config.raise_on_stop:
            raise JobCancelled(f"training stopped after {run.done} steps")
        return LoopResult(
            self.model, run.best_state, run.best_epoch, run.best_score, run.history, run.epoch, run.done,
            stopped, early,
        )
