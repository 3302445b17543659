"""The Axon tracking panel's state, Qt-free: traces and their edits, their autosave document,
the tracker (packaged, a file, or a fine-tuned version) and fine-tuning on corrected paths.

The panel keeps the current paths in a napari Shapes layer and the tracker's own output
(vertices, per-vertex entropy, stop reason) beside it, keyed by seed id; everything here works
on those plain values, so it is tested without a display and reused by scripts.

* :func:`vertex_entropy`, :func:`is_edited`, :func:`entropy_points`, :func:`trace_features`:
  what the layers show.
* :func:`traces_document` / :func:`read_traces_document` and :class:`TraceStore`: the autosave
  file (JSON, written atomically by the shared :class:`~medloop.app.io.autosave.Autosaver` in
  the image's annotation folder -- never inside the installed package).
* :class:`TrackerSource`, :func:`packaged_tracker`, :func:`tracker_from_file`,
  :class:`TrackerVersions`: which actor traces, and its fine-tuned versions with rollback.
* :func:`fine_tune`: the paper's fine-tune mode on the user's corrected paths.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from medloop.app.errors import MedloopError
from medloop.app.io.autosave import AnnotationStore
from medloop.app.io.image import MedImage
from medloop.plugins.axons.checks import TracingInputError

DOCUMENT_FORMAT = "medloop-axon-traces-1"
TRACES_SUFFIX = ".axon-traces.json"
PACKAGED_TRACKER = "axon-tracker-si"
#: Where the packaged tracker's loader lives (written beside this module by issue 15 item 2).
PACKAGED_LOADER = "medloop.plugins.axons.tracker"
DRAWN = "drawn"  # stop_reason of a path the user drew (or loaded), not traced
SAME_VERTEX_PX = 1e-3  # a vertex closer than this to the tracker's is the tracker's


class TracedPath(NamedTuple):
    """What the tracker returned for one seed (kept while the user edits its path)."""

    vertices: np.ndarray  # (N, 2) float (row, col)
    entropy: np.ndarray  # (N,) per vertex (see vertex_entropy)
    stop_reason: str


# -- what the layers show ----------------------------------------------------------------------
def vertex_entropy(n_vertices: int, step_entropy: np.ndarray) -> np.ndarray:
    """Per-vertex entropy: vertex i gets the entropy of the step taken from it; the last vertex,
    from which no step was taken, repeats the step that reached it (so every vertex is coloured)."""
    e = np.asarray(step_entropy, dtype=np.float64).ravel()
    if n_vertices == 0:
        return np.zeros(0)
    if len(e) == 0:
        return np.full(n_vertices, np.nan)
    out = np.empty(n_vertices)
    k = min(len(e), n_vertices)
    out[:k] = e[:k]
    out[k:] = e[k - 1]
    return out


def traced_from(trace: Any) -> TracedPath:
    """A :class:`~medloop.plugins.axons.trace.Trace` as the panel keeps it."""
    v = np.asarray(trace.vertices, dtype=np.float64)
    return TracedPath(v, vertex_entropy(len(v), trace.entropy), str(trace.stop_reason))


def is_edited(path: np.ndarray, traced: TracedPath | None) -> bool:
    """Whether ``path`` differs from the tracker's output (True for a drawn path)."""
    if traced is None:
        return True
    p = np.asarray(path, dtype=np.float64)
    return p.shape != traced.vertices.shape or not np.allclose(p, traced.vertices, atol=SAME_VERTEX_PX, rtol=0)


def _kept_vertices(path: np.ndarray, traced: TracedPath) -> np.ndarray:
    """Indices into ``traced`` of its vertices still present in ``path`` (the user's edit moved
    or removed the others: their entropy no longer describes the path)."""
    from scipy.spatial import cKDTree

    if len(path) == 0:
        return np.zeros(0, dtype=int)
    d, _ = cKDTree(np.asarray(path, dtype=np.float64)).query(traced.vertices)
    return np.flatnonzero(d <= SAME_VERTEX_PX)


def entropy_points(paths: Sequence[np.ndarray], seed_ids: Sequence[int], traced: Mapping[int, TracedPath]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(points (M, 2), entropy (M,), seed id (M,)) of every traced vertex still on its path."""
    pts, ent, ids = [np.zeros((0, 2))], [np.zeros(0)], [np.zeros(0, dtype=int)]
    for path, sid in zip(paths, seed_ids):
        t = traced.get(int(sid))
        if t is None:
            continue
        keep = _kept_vertices(np.asarray(path), t) if is_edited(path, t) else np.arange(len(t.vertices))
        keep = keep[np.isfinite(t.entropy[keep])]
        pts.append(t.vertices[keep])
        ent.append(t.entropy[keep])
        ids.append(np.full(len(keep), int(sid)))
    return np.concatenate(pts), np.concatenate(ent), np.concatenate(ids)


def trace_features(paths: Sequence[np.ndarray], seed_ids: Sequence[int], traced: Mapping[int, TracedPath]) -> dict[str, list]:
    """The traces layer's features, one row per path: ``seed_id`` (-1: drawn), ``n_steps``,
    ``mean_entropy`` (nan when drawn), ``stop_reason`` ("drawn" when drawn) and ``edited``."""
    cols: dict[str, list] = {"seed_id": [], "n_steps": [], "mean_entropy": [], "stop_reason": [], "edited": []}
    for path, sid in zip(paths, seed_ids):
        t = traced.get(int(sid))
        cols["seed_id"].append(int(sid))
        cols["n_steps"].append(int(len(t.vertices) - 1) if t is not None else max(len(path) - 1, 0))
        steps = t.entropy[:-1] if t is not None and len(t.entropy) > 1 else (t.entropy if t is not None else np.zeros(0))
        cols["mean_entropy"].append(float(np.nanmean(steps)) if len(steps) and np.isfinite(steps).any() else math.nan)
        cols["stop_reason"].append(t.stop_reason if t is not None else DRAWN)
        cols["edited"].append(bool(is_edited(path, t)))
    return cols


def corrected_paths(paths: Sequence[np.ndarray], seed_ids: Sequence[int], traced: Mapping[int, TracedPath]) -> list[np.ndarray]:
    """The paths to fine-tune on: those the user edited or drew (untouched traces are the
    tracker's own guess, not ground truth)."""
    return [np.asarray(p, dtype=np.float64) for p, sid in zip(paths, seed_ids) if is_edited(p, traced.get(int(sid)))]


def max_projection(stack: Any) -> np.ndarray:
    """The maximum projection of a 3-D stack along its first axis (the paper traced these)."""
    arr = np.asarray(stack)
    if arr.ndim != 3:
        raise TracingInputError(f"a maximum projection needs a 3-D stack, got shape {arr.shape}")
    return arr.max(axis=0)


def content_digest(array: np.ndarray) -> str:
    """A short hash of an image's pixels: images without a file are told apart by content."""
    a = np.ascontiguousarray(array)
    h = hashlib.sha1(f"{a.shape}{a.dtype}".encode())
    h.update(a.data)
    return h.hexdigest()[:16]


# -- autosave ----------------------------------------------------------------------------------
def traces_document(
    shape: tuple[int, int], paths: Sequence[np.ndarray], seed_ids: Sequence[int],
    traced: Mapping[int, TracedPath], seeds: Mapping[int, Sequence[float]],
) -> dict[str, Any]:
    """The autosave document: every path as shown (the edit), the tracker's output per seed
    and the seeds, in array (row, col) coordinates."""
    return {
        "format": DOCUMENT_FORMAT,
        "shape": [int(s) for s in shape],
        "paths": [{"seed_id": int(sid), "vertices": np.asarray(p, dtype=float).tolist()} for p, sid in zip(paths, seed_ids)],
        "traced": {
            str(sid): {"vertices": t.vertices.tolist(), "entropy": [None if not np.isfinite(e) else float(e) for e in t.entropy], "stop_reason": t.stop_reason}
            for sid, t in traced.items()
        },
        "seeds": {str(sid): [float(v) for v in rc] for sid, rc in seeds.items()},
    }


@dataclass
class TracesState:
    """A read autosave document."""

    paths: list[np.ndarray] = field(default_factory=list)
    seed_ids: list[int] = field(default_factory=list)
    traced: dict[int, TracedPath] = field(default_factory=dict)
    seeds: dict[int, np.ndarray] = field(default_factory=dict)


def read_traces_document(doc: Mapping[str, Any], shape: tuple[int, int]) -> TracesState:
    """:func:`traces_document`'s inverse; a document of another format or image shape is refused."""
    if doc.get("format") != DOCUMENT_FORMAT:
        raise MedloopError(f"not an axon traces file (format {doc.get('format')!r}, expected {DOCUMENT_FORMAT!r})")
    if tuple(doc.get("shape", ())) != tuple(shape):
        raise MedloopError(f"saved traces belong to a {tuple(doc.get('shape', ()))} image, this one is {tuple(shape)}")
    state = TracesState()
    for item in doc.get("paths", []):
        state.paths.append(np.asarray(item["vertices"], dtype=np.float64).reshape(-1, 2))
        state.seed_ids.append(int(item["seed_id"]))
    for sid, t in doc.get("traced", {}).items():
        ent = np.array([np.nan if e is None else e for e in t["entropy"]], dtype=np.float64)
        state.traced[int(sid)] = TracedPath(np.asarray(t["vertices"], dtype=np.float64).reshape(-1, 2), ent, str(t["stop_reason"]))
    state.seeds = {int(sid): np.asarray(rc, dtype=np.float64) for sid, rc in doc.get("seeds", {}).items()}
    return state


class TraceStore(AnnotationStore):
    """Traces autosave as ``<image key>.<name>.axon-traces.json`` in the image's annotation
    folder (beside the image, else the per-user data folder; never in the package). An image
    without a file is keyed by its pixels (``digest``), not only its shape and spacing, so two
    unsaved images of one size never share traces. Used by
    :class:`~medloop.app.io.autosave.Autosaver` with ``table=True``: the "table" it saves is the
    document's JSON text."""

    def __init__(self, folder: str | os.PathLike, digest: str = "") -> None:
        self.digest = digest
        super().__init__(folder)

    @classmethod
    def for_image(cls, image: MedImage, digest: str = "") -> "TraceStore":  # type: ignore[override]
        return cls(cls.default_folder(image), digest)

    def image_key(self, image: MedImage) -> str:
        if not image.path and self.digest:
            return f"image-{self.digest}"
        return super().image_key(image)

    def table_path_for(self, image: MedImage, name: str) -> Path:
        if not name:
            raise ValueError("traces need a layer name")
        return self.folder / f"{self.image_key(image)}.{name}{TRACES_SUFFIX}"

    def save_table(self, image: MedImage, name: str, rows: Any) -> Path:
        """Write the document (its JSON text, as the Autosaver hands it over) atomically."""
        from medloop.app.errors import ImageWriteError
        from medloop.app.io.atomic import atomic_write_text

        target = self.table_path_for(image, name)
        text = str(np.asarray(rows).item()) if isinstance(rows, np.ndarray) else str(rows)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_write_text(target, text, suffix=".json")
        except OSError as exc:
            raise ImageWriteError(f"cannot write {target} ({exc.strerror})") from None
        return target

    def load_traces(self, image: MedImage, name: str, shape: tuple[int, int]) -> TracesState | None:
        """The saved traces, None if there are none; an unreadable file is named in the error."""
        p = self.table_path_for(image, name)
        if not p.is_file():
            return None
        try:
            return read_traces_document(json.loads(p.read_text(encoding="utf-8")), shape)
        except (OSError, ValueError, KeyError, TypeError, MedloopError) as exc:
            raise MedloopError(f"saved traces {p} could not be restored ({exc}); move the file away to start afresh") from None

    def temp_files(self) -> list[Path]:
        if not self.folder.is_dir():
            return super().temp_files()
        ours = [p for p in self.folder.iterdir() if p.name.startswith(".") and TRACES_SUFFIX + "." in p.name]
        return sorted(set(super().temp_files()) | set(ours))


# -- the tracker -------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrackerSource:
    """A base tracker: its name (versions are kept under it) and how to load its actor."""

    name: str
    load: Callable[[], Any]
    description: str = ""


def packaged_tracker(name: str = PACKAGED_TRACKER) -> TrackerSource | None:
    """The packaged tracker, or None while ``medloop.plugins.axons.tracker`` is not installed."""
    import importlib

    try:
        module = importlib.import_module(PACKAGED_LOADER)
        loader = module.load_tracker
    except (ImportError, AttributeError):
        return None
    return TrackerSource(name, lambda: loader(name), f"{name} (packaged)")


def tracker_from_file(path: str | os.PathLike[str]) -> TrackerSource:
    """A tracker saved by :func:`~medloop.plugins.axons.nets.save_actor` (or a training checkpoint)."""
    p = Path(path).expanduser().absolute()
    if not p.is_file():
        raise TracingInputError(f"tracker file {p} does not exist; choose an axon-tracker actor (.pt)")
    digest = hashlib.sha1(str(p).encode()).hexdigest()[:8]
    return TrackerSource(f"{p.stem}-{digest}", lambda: str(p), p.name)


def load_tracker_actor(source: Any) -> Any:
    """The :class:`~medloop.plugins.axons.nets.Actor` of a source's ``load()`` result (an actor,
    a checkpoint path or a state dict), checked; call it in a worker (it reads weights)."""
    from medloop.plugins.axons.nets import load_actor

    loaded = source.load() if isinstance(source, TrackerSource) else source
    # the packaged loader returns a Tracker (actor + card, sha256 checked); files give the actor's state
    return load_actor(getattr(loaded, "actor", loaded))


class TrackerVersions:
    """Fine-tuned versions of one base tracker: ``<root>/<base>/v<N>/actor.pt`` (+ ``info.json``)
    and ``versions.json`` ({"current": N}, 0 = the base). A version folder is written hidden and
    renamed into place, so it appears whole or not at all; versions are never rewritten, and
    rollback only moves ``current``."""

    def __init__(self, root: str | os.PathLike[str], base: str) -> None:
        self.folder = Path(root) / base
        self.base = base

    def list(self) -> list[int]:
        if not self.folder.is_dir():
            return []
        found = [int(p.name[1:]) for p in self.folder.iterdir() if p.name[:1] == "v" and p.name[1:].isdigit() and (p / "actor.pt").is_file()]
        return sorted(found)

    @property
    def current(self) -> int:
        try:
            version = int(json.loads((self.folder / "versions.json").read_text(encoding="utf-8"))["current"])
        except FileNotFoundError:
            return 0
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise MedloopError(f"tracker version state {self.folder / 'versions.json'} is unreadable ({exc}); delete it") from None
        return version if version == 0 or version in self.list() else 0

    def actor_path(self, version: int) -> Path:
        return self.folder / f"v{int(version)}" / "actor.pt"

    def info(self, version: int) -> dict[str, Any]:
        try:
            return json.loads((self.folder / f"v{int(version)}" / "info.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def save(self, actor: Any, info: Mapping[str, Any]) -> int:
        """Add ``v<N+1>`` (parent: the current version) and make it current."""
        from medloop.plugins.axons.nets import save_actor

        self.folder.mkdir(parents=True, exist_ok=True)
        version = (max(self.list()) if self.list() else 0) + 1
        record = {**dict(info), "parent": self.current, "version": version, "base": self.base}
        tmp = Path(tempfile.mkdtemp(prefix=f".v{version}.", dir=self.folder))
        try:
            save_actor(actor, tmp / "actor.pt", record)
            (tmp / "info.json").write_text(json.dumps(record, indent=1, default=float), encoding="utf-8")
            os.replace(tmp, self.folder / f"v{version}")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self.rollback(version)
        return version

    def rollback(self, version: int) -> None:
        """Make ``version`` (0 = the base) the one that traces."""
        from medloop.app.io.atomic import atomic_write_text

        if version != 0 and version not in self.list():
            raise MedloopError(f"tracker {self.base} has no version v{version}; choose one of {['base'] + [f'v{v}' for v in self.list()]}")
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.folder / "versions.json", json.dumps({"current": int(version)}))


def versions_root() -> Path:
    """Fine-tuned trackers live in the per-user models folder, never in the package."""
    from medloop.models.registry import user_models_dir

    return user_models_dir() / "axon-trackers"


# -- fine-tuning -------------------------------------------------------------------------------
@dataclass(frozen=True)
class FineTuneParams:
    """A fine-tune on the user's corrected paths (the paper's fine-tune mode)."""

    iterations: int = 10  # PPO iterations, each one batched roll-out + update
    episodes: int = 8  # episodes per iteration, drawn from the paths (either end)
    window_scale: float = 1.0
    stop_radius_px: float = 3.0
    seed: int = 0


def steps_for(paths: Sequence[np.ndarray], step_px: float = 4.0) -> int:
    """An episode cap of about 3x the longest path in full steps (the spec's 60 for 64 px
    axons), within 20-200."""
    from medloop.plugins.axons.geometry import arc_length

    longest = max(float(arc_length(np.asarray(p, dtype=np.float64))[-1]) for p in paths)
    return int(min(200, max(20, math.ceil(3.0 * longest / step_px))))


@dataclass
class FineTuned:
    """A finished fine-tune: the new actor and coverage of the paths before and after."""

    actor: Any
    history: list[dict[str, Any]]
    coverage_before: float
    coverage_after: float
    iterations: int
    n_paths: int
    kept_start: bool = False  # no iteration beat the starting weights: ``actor`` is the start


def fine_tune(
    actor: Any,
    image: np.ndarray,
    paths: Sequence[np.ndarray],
    params: FineTuneParams = FineTuneParams(),
    progress: Callable[..., None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> FineTuned:
    """Fine-tune a copy of ``actor`` with PPO on (``image``, path) pairs as ground truth;
    ``progress(done, total, info)`` as the training loop reports it (``event`` "step" with
    ``return``, "epoch" with ``val_coverage`` on the paths), plus an ``event`` "baseline" first.
    A cancel raises :class:`~medloop.app.engine.jobs.JobCancelled` (the actor is untouched)."""
    from medloop.app.engine.jobs import JobCancelled
    from medloop.plugins.axons.checks import check_pairs
    from medloop.plugins.axons.env import EnvConfig, episode_from_path
    from medloop.plugins.axons.ppo import TrackerConfig, evaluate_policy, train_tracker

    if not paths:
        raise TracingInputError("no corrected path: edit a trace (move, delete vertices) or draw the missing path first")
    pairs = check_pairs([image] * len(paths), list(paths))
    env = EnvConfig(max_steps=steps_for([p for _, p in pairs]), window_scale=params.window_scale, stop_radius_px=params.stop_radius_px)
    config = TrackerConfig(iterations=params.iterations, episodes=params.episodes, env=env, val_every=1, seed=params.seed)
    start = copy.deepcopy(load_tracker_actor(actor))
    baseline = evaluate_policy(start, [episode_from_path(i, p) for i, p in pairs], env)
    before = baseline["val_coverage"]
    if progress is not None:
        progress(0, params.iterations, {"event": "baseline", "epoch": 0, "val_coverage": before, "val_error": baseline["val_error"]})
    result = train_tracker(config, progress, should_stop, pairs=([i for i, _ in pairs], [p for _, p in pairs]), actor=start)
    if result.loop.stopped:
        raise JobCancelled("fine-tuning cancelled")
    after = float(result.start_validation["val_coverage"]) if result.kept_start else float(result.loop.best_score)
    return FineTuned(result.actor.eval(), result.history, float(before), after, params.iterations, len(pairs), result.kept_start)
