"""The prompt session: one code path for the panel, the CLI and the benchmark (Qt-free).

``PromptSession(image, labels, params)`` keeps the object being built: its prompts (in mm), a
region of interest (ROI) that grows while the object touches a face that is not an image face,
the engine's memory, and a multi-level undo stack of exact ROI diffs. Every interaction returns
an :class:`Update` (the changed voxels with their values before and after) that has already been
written into ``labels`` through ``writer`` -- by default straight into the array; the panel's
writer hands it to the GUI thread, which applies only those voxels (voxels painted meanwhile are
kept). Other classes are locked by default (R4); a guard keeps a negative prompt from enlarging
the object and a positive one from erasing it, and asks before a step grows it more than
``max_growth`` times (R5); every prompt's effect is explained in ``Update.message`` (R7).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from medloop.app.io.image import MedImage
from medloop.plugins.interactive.engine_api import EngineInput, RoiPoint
from medloop.plugins.interactive.params import InteractiveParams
from medloop.plugins.interactive.promptlog import LogRow, prompt_rows, rows_to_prompt, write_log
from medloop.plugins.interactive.prompts import (
    Box, Point, Prompt, PromptError, Scribble, box_index, point_index, scribble_index,
)

Slices = tuple[slice, ...]


@dataclass
class Update:
    """What one interaction changed: absolute voxel indices, their values before and after."""

    index: tuple[np.ndarray, ...]
    before: np.ndarray
    after: np.ndarray
    roi: Slices | None = None
    message: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def changed(self) -> int:
        return int(self.before.size)


@dataclass(frozen=True)
class Ring:
    """A ring written around a committed object: ``mm`` wide; classes from ``prediction`` (class
    indices, full size) or ``background_index``; ``class_index`` is the object's own class; a
    class ``k`` is stored as ``k + offset`` (Correction annotations: 1, 0 = unlabelled)."""

    class_index: int
    mm: float = 2.0
    prediction: np.ndarray | None = None
    background_index: int = 0
    offset: int = 1

    def describe(self) -> str:
        """The commit row's ``kind`` in the prompt log: what :meth:`from_description` rebuilds."""
        source = "prediction" if self.prediction is not None else "background"
        return f"ring mm={self.mm:g} class={self.class_index} background={self.background_index} offset={self.offset} from={source}"

    @classmethod
    def from_description(cls, text: str, prediction: np.ndarray | None, where: str) -> Ring:
        """The ring a commit row describes; a ring drawn from a model's prediction needs it again."""
        try:
            values = dict(part.split("=", 1) for part in text.split()[1:])
            ring = cls(int(values["class"]), float(values["mm"]), None, int(values["background"]), int(values["offset"]))
            source = values["from"]
        except (KeyError, ValueError):
            raise PromptError(f"{where}: {text!r} is not a ring medloop wrote; fix or remove the row") from None
        if source != "prediction":
            return ring
        if prediction is None:
            raise PromptError(f"{where} drew its ring from the model's prediction; give that prediction "
                              "(replay --ring-prediction PRED, on the image's grid) to replay it")
        return replace(ring, prediction=prediction)


@dataclass
class _Object:
    """The object being built; ``mask`` and ``base`` (the labels before it) cover ``roi``."""

    id: int
    prompts: list[Prompt] = field(default_factory=list)
    roi: Slices | None = None
    mask: np.ndarray | None = None
    base: np.ndarray | None = None
    state: dict[str, Any] = field(default_factory=dict)
    pending: Any = None  # a result the growth guard held back until the user confirms


@dataclass
class _Step:
    update: Update
    before: _Object
    after: _Object


def _snapshot(obj: _Object) -> _Object:
    return _Object(obj.id, list(obj.prompts), obj.roi, None if obj.mask is None else obj.mask.copy(),
                   None if obj.base is None else obj.base.copy(), copy.deepcopy(obj.state))


def _intensity_range(array: np.ndarray) -> tuple[float, float]:
    sample = array[tuple(slice(None, None, max(1, s // 64)) for s in array.shape)]
    lo, hi = np.percentile(sample, [0.5, 99.5])
    return float(lo), float(hi) if hi > lo else float(lo) + 1.0


class PromptSession:
    """Click -> object on one image and one labels array (see the module docstring)."""

    def __init__(self, image: MedImage, labels: np.ndarray | None = None, params: InteractiveParams | None = None,
                 engine: Any = None, writer: Callable[[Update], None] | None = None, log_path: str | Path | None = None) -> None:
        self.params = (params or InteractiveParams()).validate()
        if image.channel_axis:
            raise PromptError("click -> object needs a single-channel image; convert colour images to grey first")
        self.image = image
        self.ndim = image.ndim
        self.array = np.asarray(image.array)
        shape = self.array.shape
        self.labels = np.zeros(shape, np.uint16) if labels is None else labels
        if tuple(self.labels.shape) != tuple(shape):
            raise PromptError(f"the target labels have shape {tuple(self.labels.shape)} but the image {tuple(shape)}; "
                              "choose a labels layer on the image's grid")
        self.engine = engine if engine is not None else make_engine(self.params)
        self.writer = writer or self._write
        self.log_path = None if log_path is None else Path(log_path)
        self.intensity = _intensity_range(self.array)
        self.object = _Object(id=1)
        self.committed: list[int] = []
        self.undo_stack: list[_Step] = []
        self.redo_stack: list[_Step] = []
        self.log: list[LogRow] = []
        self._seq = 0
        #: Called at a commit once the object's voxels are written and before the log records it:
        #: the panel saves the labels there, so a restore never trusts a commit they lack.
        self.on_commit: Callable[[], None] | None = None

    # -- public API ------------------------------------------------------------------------
    def add(self, prompt: Prompt, should_stop: Callable[[], bool] | None = None) -> Update:
        """Apply one prompt to the current object; returns what changed (already written)."""
        start = time.perf_counter()
        refusal = self._refusal(prompt)
        if refusal is not None:
            update = self._empty(refusal)
        else:
            update = self._compute(prompt, should_stop)
        update.info["ms"] = (time.perf_counter() - start) * 1000.0
        self._log_prompt(prompt, update)
        return update

    def confirm(self) -> Update:
        """Apply the result the growth guard held back."""
        pending = self.object.pending
        if pending is None:
            return self._empty("nothing waits for confirmation")
        prompt, roi, mask, state, info = pending
        self.object.pending = None
        update = self._apply(prompt, roi, mask, state, info, "confirmed: " + info.get("method", ""))
        self._log_event("confirm", update)
        return update

    def undo(self) -> Update:
        """Revert the last interaction exactly (several levels)."""
        return self._step(self.undo_stack, self.redo_stack, "undo")

    def redo(self) -> Update:
        """Re-apply the last undone interaction."""
        return self._step(self.redo_stack, self.undo_stack, "redo")

    def _step(self, source: list[_Step], target: list[_Step], event: str) -> Update:
        """Move one interaction from ``source`` to ``target``, writing its diff back or forth."""
        if not source:
            return self._empty(f"nothing to {event}")
        step = source.pop()
        target.append(step)
        u = step.update
        if event == "undo":
            self.object = _snapshot(step.before)
            update = Update(u.index, u.after.copy(), u.before.copy(), u.roi, "undone")
        else:
            self.object = _snapshot(step.after)
            update = Update(u.index, u.before.copy(), u.after.copy(), u.roi, "redone")
        self.writer(update)
        self._log_event(event, update)
        return update

    def reset_object(self) -> Update:
        """Remove the current object (its voxels get back their earlier values); undoable."""
        obj = self.object
        if obj.mask is None or not obj.mask.any():
            self.object = _Object(obj.id)
            return self._empty("the object is empty")
        update = self._apply(None, obj.roi, np.zeros_like(obj.mask), {}, {}, "object reset")
        self.object.prompts = []
        self.undo_stack[-1].after = _snapshot(self.object)
        self._log_event("reset", update)
        return update

    def commit(self, ring: Ring | None = None) -> int:
        """Finish the current object and start the next; returns the committed object's id.

        With ``ring``, unlabelled voxels within ``ring.mm`` of the object (inside its ROI) get
        the ring's classes first (:func:`~medloop.plugins.interactive.annotation.ring_values`)."""
        done = self.object.id
        update = self._empty(f"object {done} committed")
        obj = self.object
        if obj.mask is not None and obj.mask.any():
            self.committed.append(done)
            if ring is not None:
                update = self._ring(ring)
        self.object = _Object(done + 1)
        self.undo_stack.clear()
        self.redo_stack.clear()
        if self.on_commit is not None:
            self.on_commit()
        self._log_event("commit", update, ring.describe() if ring is not None and done in self.committed else "")
        return done

    def _ring(self, ring: Ring) -> Update:
        from medloop.plugins.interactive.annotation import ring_values

        obj = self.object
        roi = obj.roi
        prediction = None if ring.prediction is None else np.asarray(ring.prediction[roi])
        local, values = ring_values(obj.mask, np.asarray(self.labels[roi]), ring.class_index, tuple(self.image.spacing[::-1]),
                                    ring.mm, prediction, ring.background_index, ring.offset)
        index = tuple(ix + sl.start for ix, sl in zip(local, roi))
        kind = "ring from the model's prediction" if ring.prediction is not None else "background ring"
        update = Update(index, np.asarray(self.labels[index]).copy(), values.astype(self.labels.dtype), roi,
                        f"object {obj.id} committed with a {ring.mm:g} mm {kind} ({values.size} voxels)")
        self.writer(update)
        return update

    def resume(self, rows: list[LogRow]) -> int:
        """Continue where a prompt log ended (crash recovery): the committed objects are already
        in the labels (autosaved); the open object's prompts, undos and redos are replayed
        (through the writer). The log keeps its rows and numbering. Returns the prompts replayed."""
        committed = [r.object for r in rows if r.event == "commit"]
        last = max((i for i, r in enumerate(rows) if r.event == "commit"), default=-1)
        path, self.log_path = self.log_path, None
        self.committed = list(committed)
        self.object.id = (committed[-1] + 1) if committed else (rows[0].object if rows else 1)
        groups: dict[int, list[LogRow]] = {}
        for r in rows[last + 1:]:
            groups.setdefault(r.seq, []).append(r)
        prompts = 0
        for group in groups.values():
            event = group[0].event
            if event == "prompt":
                self.params = replace(self.params, label=group[0].label or self.params.label)
                self.add(rows_to_prompt(group, self.ndim))
                prompts += 1
            elif event in ("undo", "redo", "confirm"):
                getattr(self, event)()
            elif event == "reset":
                self.reset_object()
        self.log = list(rows)
        self._seq = max((r.seq for r in rows), default=0)
        self.log_path = path
        return prompts

    def log_skipped(self, prompts: list[Prompt]) -> None:
        """Log prompts a later one replaced before they ran (the panel's latest-wins queue)."""
        for prompt in prompts:
            self._seq += 1
            base = LogRow(seq=self._seq, event="skip", object=self.object.id, label=self.params.label,
                          message="skipped: a later click replaced it before it ran")
            self.log.extend(prompt_rows(prompt, base))
        if prompts:
            self._save_log()

    @property
    def seq(self) -> int:
        """The number of the last logged row."""
        return self._seq

    @property
    def object_voxels(self) -> int:
        return 0 if self.object.mask is None else int(self.object.mask.sum())

    def object_mask(self) -> np.ndarray:
        """The current object as a full-size boolean array."""
        out = np.zeros(self.array.shape, bool)
        if self.object.mask is not None:
            out[self.object.roi] = self.object.mask
        return out

    # -- checks ----------------------------------------------------------------------------
    def _refusal(self, prompt: Prompt) -> str | None:
        """Why a prompt changes nothing (R7), or None; raises PromptError for unusable ones."""
        obj = self.object
        empty = obj.mask is None or not obj.mask.any()
        if isinstance(prompt, Point):
            idx = point_index(self.image, prompt)
            inside = not empty and self._in_object(idx)
            if prompt.positive and inside:
                return "the click is already inside the object: nothing changed (click where the object is missing)"
            if not prompt.positive and empty:
                return "a negative click needs an object: start one with a positive click, a box or a positive scribble"
            if not prompt.positive and not inside:
                return "the click is already outside the object: nothing changed (click where it leaks)"
            if prompt.positive and self.params.lock_other_classes and self._locked_at(idx):
                return f"the click lies on another class (value {int(self.labels[idx])}), which is locked: nothing changed"
        elif isinstance(prompt, Box):
            box_index(self.image, prompt)
        elif isinstance(prompt, Scribble):
            if scribble_index(self.image, prompt).size == 0:
                raise PromptError("the scribble lies outside the image; draw it over the object")
            if not prompt.positive and empty:
                return "a negative scribble needs an object: start one with a positive click, a box or a positive scribble"
        return None

    def _in_object(self, idx: tuple[int, ...]) -> bool:
        roi = self.object.roi
        if roi is None or any(not (s.start <= i < s.stop) for s, i in zip(roi, idx)):
            return False
        return bool(self.object.mask[tuple(i - s.start for s, i in zip(roi, idx))])

    def _locked_at(self, idx: tuple[int, ...]) -> bool:
        v = int(self.labels[idx])
        return v != 0 and v != self.params.label and not self._in_object(idx)

    # -- compute ---------------------------------------------------------------------------
    def _compute(self, prompt: Prompt, should_stop: Callable[[], bool] | None) -> Update:
        obj = self.object
        roi = self._initial_roi(prompt)
        if obj.roi is not None:
            roi = _union(roi, obj.roi)
        grows = not (isinstance(prompt, (Point, Scribble)) and not prompt.positive)
        for _ in range(32):
            mask, state, info = self._run_engine(prompt, roi, should_stop)
            bigger = self._grown(roi, mask) if grows else None
            if bigger is None:
                break
            roi = bigger
        return self._guard_and_apply(prompt, roi, mask, state, info)

    def _initial_roi(self, prompt: Prompt) -> Slices:
        shape = self.array.shape
        spacing = np.asarray(self.image.spacing[::-1])
        if isinstance(prompt, Box):
            lo, hi = box_index(self.image, prompt)
            size = (hi - lo) * self.params.box_margin
            if self.ndim == 3 and prompt.plane is not None:
                size[prompt.plane] = max(size[a] * spacing[a] for a in range(3) if a != prompt.plane) / spacing[prompt.plane]
            centre = (lo + hi - 1) / 2.0
            return _box_slices(centre - size / 2, centre + size / 2, shape)
        if isinstance(prompt, Scribble):
            idx = scribble_index(self.image, prompt)
            half = np.maximum((idx.max(0) - idx.min(0)) * 0.75, self.params.first_roi_mm / 2 / spacing)
            centre = (idx.max(0) + idx.min(0)) / 2.0
            return _box_slices(centre - half, centre + half, shape)
        centre = np.asarray(point_index(self.image, prompt), float)
        half = self.params.first_roi_mm / 2 / spacing
        return _box_slices(centre - half, centre + half + 1, shape)

    def _grown(self, roi: Slices, mask: np.ndarray) -> Slices | None:
        """A ROI x ``grow`` when the object touches a face that is not an image face."""
        shape = self.array.shape
        touching = False
        for axis, s in enumerate(roi):
            low = [slice(None)] * self.ndim
            low[axis] = 0
            high = [slice(None)] * self.ndim
            high[axis] = -1
            if (s.start > 0 and mask[tuple(low)].any()) or (s.stop < shape[axis] and mask[tuple(high)].any()):
                touching = True
        if not touching:
            return None
        lo = np.array([s.start for s in roi], float)
        hi = np.array([s.stop for s in roi], float)
        centre, half = (lo + hi) / 2, (hi - lo) / 2 * self.params.grow
        bigger = _box_slices(centre - half, centre + half, shape)
        return None if bigger == roi else bigger

    def _run_engine(self, prompt: Prompt, roi: Slices, should_stop: Callable[[], bool] | None) -> tuple[np.ndarray, dict, dict]:
        from medloop.plugins.interactive.zoom import run_zoomed

        request = self._request(prompt, roi)
        kind = getattr(self.engine, "method", None)
        method = kind(self.ndim, prompt.kind, request.previous.sum() == 0, bool(prompt.positive)) if kind else self.engine.name
        budget = self.params.budget_voxels or (self.engine.budget(method) if hasattr(self.engine, "budget") else self.engine.budget_voxels)
        mask, zoom = run_zoomed(self.engine, request, budget, should_stop)
        info = {"engine": self.engine.name, "method": request.state.get("method", method), "roi_voxels": int(np.prod([s.stop - s.start for s in roi])),
                "zoom": zoom, "roi": tuple((s.start, s.stop) for s in roi)}
        return mask, request.state, info

    def _request(self, prompt: Prompt, roi: Slices) -> EngineInput:
        obj = self.object
        origin = np.array([s.start for s in roi])
        prompts = [*obj.prompts, prompt]
        points = []
        for p in prompts:
            if isinstance(p, Point):
                idx = np.asarray(point_index(self.image, p)) - origin
                if np.all(idx >= 0) and np.all(idx < [s.stop - s.start for s in roi]):
                    points.append(RoiPoint(tuple(int(i) for i in idx), p.positive))
        crop_shape = tuple(s.stop - s.start for s in roi)
        previous = self._crop_mask(roi)
        base = self._crop_base(roi)
        locked = (base != 0) & (base != self.params.label) if self.params.lock_other_classes else np.zeros(crop_shape, bool)
        state = copy.deepcopy(obj.state)
        state["prompt_kind"] = prompt.kind
        state["prompt_positive"] = bool(prompt.positive)
        return EngineInput(
            image=self.array[roi].astype(np.float32), spacing=tuple(self.image.spacing[::-1]), points=tuple(points),
            previous=previous, locked=locked & ~previous, params=self.params, state=state,
            box=self._roi_box(prompts, origin, crop_shape), scribbles=self._roi_scribbles(prompts, origin, crop_shape),
            intensity_range=self.intensity,
        )

    def _roi_box(self, prompts: list[Prompt], origin: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray] | None:
        boxes = [p for p in prompts if isinstance(p, Box)]
        if not boxes:
            return None
        lo, hi = box_index(self.image, boxes[-1])
        return np.clip(lo - origin, 0, shape), np.clip(hi - origin, 0, shape)

    def _roi_scribbles(self, prompts: list[Prompt], origin: np.ndarray, shape: tuple[int, ...]) -> np.ndarray | None:
        scribbles = [p for p in prompts if isinstance(p, Scribble)]
        if not scribbles:
            return None
        out = np.zeros(shape, np.int8)
        for s in scribbles:
            idx = scribble_index(self.image, s) - origin
            idx = idx[np.all((idx >= 0) & (idx < np.asarray(shape)), axis=1)]
            out[tuple(idx.T)] = 1 if s.positive else 2
        return out

    def _crop_mask(self, roi: Slices) -> np.ndarray:
        out = np.zeros(tuple(s.stop - s.start for s in roi), bool)
        obj = self.object
        if obj.mask is not None:
            out[_inner(obj.roi, roi)] = obj.mask
        return out

    def _crop_base(self, roi: Slices) -> np.ndarray:
        """Labels before the object over ``roi``: its own voxels read from ``base``."""
        base = np.array(self.labels[roi], copy=True)
        obj = self.object
        if obj.base is not None:
            base[_inner(obj.roi, roi)] = obj.base
        return base

    # -- guard and writing -----------------------------------------------------------------
    def _guard_and_apply(self, prompt: Prompt, roi: Slices, mask: np.ndarray, state: dict, info: dict) -> Update:
        previous = self._crop_mask(roi)
        old, new = int(previous.sum()), int(mask.sum())
        notes = []
        negative = isinstance(prompt, (Point, Scribble)) and not prompt.positive
        if negative and (mask & ~previous).any():
            notes.append(f"guard: a negative prompt never adds voxels ({int((mask & ~previous).sum())} not added)")
            mask = mask & previous
        lost = int((previous & ~mask).sum())
        if not negative and old and lost > self.params.max_positive_loss * old:
            notes.append(f"guard: a positive prompt never erases the object ({lost} voxels kept; use a negative click to remove)")
            mask = mask | previous
        new = int(mask.sum())
        if old and new > self.params.max_growth * old and not self.params.confirm_growth:
            self.object.pending = (prompt, roi, mask, state, info)
            message = (f"guard: the object would grow {new / old:.1f}x (from {old} to {new} voxels); "
                       "confirm to apply, or undo the prompt's effect with a lower tolerance")
            update = self._empty(message)
            update.info.update(info, needs_confirmation=True)
            return update
        if not new and not negative:
            notes.append("the prompt found no object here (lower the tolerance or click inside the structure)")
        summary = f"{info.get('method', '')}: {new} voxels ({new - old:+d})"
        return self._apply(prompt, roi, mask, state, info, "; ".join([summary, *notes]))

    def _apply(self, prompt: Prompt | None, roi: Slices, mask: np.ndarray, state: dict, info: dict, message: str) -> Update:
        before_obj = _snapshot(self.object)
        previous = self._crop_mask(roi)
        base = self._crop_base(roi)
        gained, lost = mask & ~previous, previous & ~mask
        local = np.nonzero(gained | lost)
        index = tuple(ix + s.start for ix, s in zip(local, roi))
        before = np.asarray(self.labels[index]).copy()
        after = np.where(gained[local], self.params.label, base[local]).astype(self.labels.dtype)
        update = Update(index, before, after, roi, message, dict(info))
        obj = self.object
        obj.roi, obj.mask, obj.base = roi, mask, base
        if state:
            obj.state = {k: v for k, v in state.items() if k not in ("prompt_kind", "prompt_positive")}
        if prompt is not None:
            obj.prompts.append(prompt)
        self.writer(update)
        self.undo_stack.append(_Step(update, before_obj, _snapshot(obj)))
        self.redo_stack.clear()
        return update

    def _write(self, update: Update) -> None:
        self.labels[update.index] = update.after

    def _empty(self, message: str) -> Update:
        nothing = tuple(np.zeros(0, np.intp) for _ in range(self.ndim))
        return Update(nothing, np.zeros(0, self.labels.dtype), np.zeros(0, self.labels.dtype), None, message)

    # -- log -------------------------------------------------------------------------------
    def _base_row(self, event: str, update: Update) -> LogRow:
        self._seq += 1
        return LogRow(seq=self._seq, event=event, object=self.object.id if event != "commit" else self.object.id - 1,
                      label=self.params.label, engine=str(update.info.get("engine", "")), method=str(update.info.get("method", "")),
                      model_sha256=str(getattr(self.engine, "sha256", "")), ms=float(update.info.get("ms", 0.0)),
                      changed=update.changed, message=update.message)

    def _log_prompt(self, prompt: Prompt, update: Update) -> None:
        self.log.extend(prompt_rows(prompt, self._base_row("prompt", update)))
        self._save_log()

    def _log_event(self, event: str, update: Update, kind: str = "") -> None:
        self.log.append(replace(self._base_row(event, update), kind=kind))
        self._save_log()

    def _save_log(self) -> None:
        if self.log_path is not None:
            write_log(self.log_path, self.log)


# -- helpers --------------------------------------------------------------------------------
def make_engine(params: InteractiveParams) -> Any:
    """The engine ``params.engine`` names (``auto``: the learned one only when it is enabled)."""
    from medloop.plugins.interactive.classical import ClassicalEngine

    if params.engine == "classical":
        return ClassicalEngine()
    enabled, reason = _learned_status()
    if params.engine == "learned":
        if not enabled and not params.allow_disabled:
            raise PromptError(f"the learned click engine is disabled ({reason}); use the classical engine (--engine classical)")
        from medloop.plugins.interactive.clicknet import LearnedEngine

        return LearnedEngine()
    if enabled:
        from medloop.plugins.interactive.clicknet import LearnedEngine

        return LearnedEngine()
    return ClassicalEngine()


def _learned_status() -> tuple[bool, str]:
    try:
        from medloop.plugins.interactive.clicknet import learned_status
    except ImportError:
        return False, "the click network is not installed"
    return learned_status()


def _box_slices(lo: np.ndarray, hi: np.ndarray, shape: tuple[int, ...]) -> Slices:
    lo = np.maximum(np.floor(lo).astype(int), 0)
    hi = np.minimum(np.ceil(hi).astype(int), shape)
    hi = np.maximum(hi, lo + 1)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def _union(a: Slices, b: Slices) -> Slices:
    return tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b))


def _inner(inner: Slices, outer: Slices) -> Slices:
    """``inner``'s position inside a crop of ``outer`` (``outer`` contains it)."""
    return tuple(slice(i.start - o.start, i.stop - o.start) for i, o in zip(inner, outer))


def replay(image: MedImage, rows: list[LogRow], labels: np.ndarray | None = None, params: InteractiveParams | None = None,
           engine: Any = None, ring_prediction: np.ndarray | None = None) -> np.ndarray:
    """Re-run a prompt log on ``image`` (any grid: prompts are mm) and return the labels.
    Commits redraw their rings; one drawn from a model's prediction takes ``ring_prediction``
    (class indices on ``image``'s grid)."""
    if ring_prediction is not None and tuple(np.shape(ring_prediction)) != tuple(image.shape[: image.ndim]):
        raise PromptError(f"the ring prediction has shape {tuple(np.shape(ring_prediction))} but the image "
                          f"{tuple(image.shape[: image.ndim])}; give the prediction made on this image")
    session = PromptSession(image, labels, params or InteractiveParams(engine="classical"), engine=engine)
    groups: dict[int, list[LogRow]] = {}
    order: list[int] = []
    for r in rows:
        if r.seq not in groups:
            order.append(r.seq)
        groups.setdefault(r.seq, []).append(r)
    for seq in order:
        group = groups[seq]
        event = group[0].event
        if event == "prompt":
            session.params = replace(session.params, label=group[0].label or session.params.label)
            session.add(rows_to_prompt(group, image.ndim))
        elif event == "confirm":
            session.confirm()
        elif event == "undo":
            session.undo()
        elif event == "redo":
            session.redo()
        elif event == "reset":
            session.reset_object()
        elif event == "commit":
            kind = group[0].kind
            session.commit(Ring.from_description(kind, ring_prediction, f"the commit with seq {seq} in the prompt log") if kind.startswith("ring") else None)
    return session.labels

