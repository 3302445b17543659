"""One cohort runner: many images through one task, serially or on ``dask.distributed``.

``run_cohort(cases, task, out_dir)`` runs ``task`` on every :class:`Case`:

- ``scheduler=None``: serially in this process (the GUI; ``should_stop`` is polled between cases);
- ``scheduler="local"``: on a ``LocalCluster`` of ``workers`` processes, started and closed here;
- ``scheduler="tcp://host:port"``: on the workers of an existing scheduler (``dask scheduler``,
  dask-jobqueue on SLURM/PBS, ...). The workers must see ``out_dir`` and the inputs at the same paths.

Each case's outputs are written atomically by the task where it runs, then a sidecar
``<case id>.json`` in ``out_dir`` records the task's fingerprint and the outcome. A re-run skips a
case whose sidecar says done with the same fingerprint, whose outputs exist and whose input has
not changed; anything else is (re)computed. A failing case is recorded with its one-line message
and the others go on. A worker that dies mid-case loses nothing: the scheduler reruns the case
elsewhere, and a case is either complete on disk or absent.

The task loads its state (a network, say) once per process: once for a serial run, once per
worker (kept on the dask ``Worker`` object, keyed by the fingerprint).
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
from itertools import islice
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medloop.app.engine.jobs import JobCancelled, ShouldStop, check_stop
from medloop.app.errors import MedloopError

CohortProgress = Callable[[int, int, dict[str, Any]], None]
"""``progress(done, total, info)``: ``info`` is the case's entry (``case``, ``status``, ``error``...)."""

RETRIES = 1  # an exception escaping a case (e.g. a failed sidecar write) is tried once more
CONNECT_TIMEOUT_S = 30  # to reach an existing scheduler, and for its first worker to be there
_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


class CohortError(MedloopError):
    """A cohort cannot run: no cases, a missing input, duplicate ids, an unreachable scheduler."""


@dataclass(frozen=True)
class Case:
    """One input of a cohort: ``path`` is an image file or a DICOM series folder; ``id`` names
    its outputs (``<id>.nii.gz``, ``<id>.json``) and must be unique within the cohort."""

    id: str
    path: Path


class CohortTask:
    """What a cohort runs on each case. Subclasses must be picklable (they travel to workers).

    - ``fingerprint()``: JSON-able provenance that decides resume (model, weights sha256,
      parameters); a case done under another fingerprint is recomputed.
    - ``load()``: the state every case needs (a network), built once per process.
    - ``run(case, state, out_dir)``: compute, write the outputs atomically into ``out_dir`` and
      return a small JSON-able record whose ``"outputs"`` lists the file names written.
    """

    def fingerprint(self) -> dict[str, Any]:
        raise NotImplementedError

    def load(self) -> Any:
        return None

    def run(self, case: Case, state: Any, out_dir: Path) -> dict[str, Any]:
        raise NotImplementedError


@dataclass
class CohortReport:
    """What a run did. ``entries`` follow the order of the cases (their sidecars' content)."""

    out_dir: Path
    fingerprint: dict[str, Any]
    entries: list[dict[str, Any]]
    computed: list[str] = field(default_factory=list)  # case ids computed by this run
    skipped: list[str] = field(default_factory=list)  # done before, with the same fingerprint
    failed: dict[str, str] = field(default_factory=dict)  # case id -> one-line message
    seconds: float = 0.0

    def summary(self) -> str:
        return (
            f"{len(self.entries)} cases: {len(self.computed)} computed, {len(self.skipped)} already done, "
            f"{len(self.failed)} failed ({self.seconds:.1f} s); outputs in {self.out_dir}"
        )


def run_cohort(
    cases: Iterable[Case],
    task: CohortTask,
    out_dir: str | os.PathLike,
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    progress: CohortProgress | None = None,
    should_stop: ShouldStop | None = None,
) -> CohortReport:
    """Run ``task`` on every case not already done; see the module docstring.

    Raises:
        CohortError: bad cases or output folder, or the scheduler cannot be reached.
        JobCancelled: ``should_stop()`` turned true (the cases finished so far are kept).
    """
    started = time.perf_counter()
    cases = _checked_cases(cases)
    fingerprint = json.loads(json.dumps(task.fingerprint(), sort_keys=True))  # as a sidecar reads it back
    out = _output_folder(out_dir)
    entries: dict[str, dict[str, Any]] = {}
    todo, skipped = [], []
    for case in cases:
        entry = _finished_entry(case, out, fingerprint)
        if entry is None:
            todo.append(case)
        else:
            entries[case.id] = entry
            skipped.append(case.id)
            _report(progress, len(entries), len(cases), {"case": case.id, "status": "skipped"})
    _remove_leftovers(out, {c.id for c in todo})  # temporary files of writes killed in an earlier run
    if todo:
        if scheduler is None:
            results = _run_serial(todo, task, out, fingerprint, should_stop)
        else:
            results = _run_distributed(todo, task, out, fingerprint, scheduler, workers, should_stop)
        with closing(results):  # a failing progress callback still closes the cluster now
            for entry in results:
                entries[entry["case"]] = entry
                _report(progress, len(entries), len(cases), entry)
        _remove_leftovers(out, {c.id for c in todo})  # of attempts on workers that died
    ordered, before = [entries[c.id] for c in cases], set(skipped)
    return CohortReport(
        out_dir=out,
        fingerprint=fingerprint,
        entries=ordered,
        computed=[e["case"] for e in ordered if e["status"] == "done" and e["case"] not in before],
        skipped=skipped,
        failed={e["case"]: e["error"] for e in ordered if e["status"] == "failed"},
        seconds=round(time.perf_counter() - started, 3),
    )


def _report(progress: CohortProgress | None, done: int, total: int, entry: dict[str, Any]) -> None:
    if progress is not None:
        info = {"case": entry["case"], "status": entry["status"]}
        if "error" in entry:
            info["error"] = entry["error"]
        progress(done, total, info)


def _checked_cases(cases: Iterable[Case]) -> list[Case]:
    """Cases with absolute paths (workers may run in another folder) and unique, file-safe ids."""
    out = [Case(str(c.id), Path(c.path).absolute()) for c in cases]
    if not out:
        raise CohortError("the cohort has no cases; give a folder of images, a list file or image paths")
    for case in out:
        if not case.id or case.id.startswith(".") or "/" in case.id or "\\" in case.id:
            raise CohortError(f"case id {case.id!r} cannot name a file; use letters, digits, '-' and '_'")
    repeated = sorted(i for i, n in Counter(c.id for c in out).items() if n > 1)
    if repeated:
        raise CohortError(f"case ids must be unique; repeated: {', '.join(repeated)}")
    return out


def _output_folder(out_dir: str | os.PathLike) -> Path:
    out = Path(out_dir).absolute()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CohortError(f"cannot create the output folder {out} ({exc.strerror or exc}); choose another") from None
    return out


# -- one case ------------------------------------------------------------------------------------


def _run_case(
    task: CohortTask, case: Case, out_dir: Path, fingerprint: dict[str, Any], state: Callable[[], Any]
) -> dict[str, Any]:
    """Run one case where this is called and write its sidecar; an exception becomes a failure."""
    started = time.perf_counter()
    entry: dict[str, Any] = {
        "case": case.id, "input": _input_stamp(case.path), "fingerprint": fingerprint,
        "host": socket.gethostname(), "pid": os.getpid(), "medloop": _medloop_version(),
    }
    try:
        record = task.run(case, state(), out_dir)
        _check_record(record, case, out_dir)
        entry.update(status="done", outputs=list(record["outputs"]), record=record)
    except JobCancelled:
        raise
    except Exception as exc:  # any failure is this case's, not the cohort's
        entry.update(status="failed", error=one_line(exc))
    entry["seconds"] = round(time.perf_counter() - started, 3)
    write_json(out_dir / f"{case.id}.json", entry)
    return entry


def _run_case_on_worker(task: CohortTask, case: Case, out_dir: Path, fingerprint: dict[str, Any]) -> dict[str, Any]:
    """The dask task: the worker's cached state, then :func:`_run_case`."""
    return _run_case(task, case, out_dir, fingerprint, lambda: _worker_state(task, fingerprint))


def _worker_state(task: CohortTask, fingerprint: dict[str, Any]) -> Any:
    """``task.load()`` once per dask worker process, kept on the ``Worker`` object (a worker
    with several threads shares it; a new fingerprint replaces it)."""
    from distributed import get_worker

    worker = get_worker()
    key = type(task).__qualname__ + json.dumps(fingerprint, sort_keys=True)
    lock = worker.__dict__.setdefault("_medloop_cohort_lock", threading.Lock())  # setdefault is atomic
    with lock:
        cached = getattr(worker, "_medloop_cohort_state", None)
        if cached is None or cached[0] != key:
            worker._medloop_cohort_state = None  # free the previous state before loading the next
            worker._medloop_cohort_state = (key, task.load())
        return worker._medloop_cohort_state[1]


def _check_record(record: Any, case: Case, out_dir: Path) -> None:
    if not isinstance(record, dict) or not isinstance(record.get("outputs"), (list, tuple)):
        raise CohortError(f"{case.path}: the task returned no record with a list of 'outputs' (a bug in the task)")
    missing = [name for name in record["outputs"] if not (out_dir / str(name)).is_file()]
    if missing:
        raise CohortError(f"{case.path}: the task did not write {', '.join(map(str, missing))} (a bug in the task)")
    json.dumps(record)  # a record the sidecar cannot hold fails here, as this case's error


def one_line(exc: BaseException) -> str:
    """The error as one line: a medloop error's own message (it names the input), else the
    exception type and its message."""
    text = " ".join(str(exc).split())
    if not isinstance(exc, MedloopError):
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text[:1000]


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as JSON atomically (the file is complete or absent)."""
    from medloop.app.io.atomic import atomic_target

    with atomic_target(path, suffix=".json") as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, sort_keys=True)


def _medloop_version() -> str:
    from medloop._version import __version__

    return __version__


def _input_stamp(path: Path) -> dict[str, Any]:
    """Size and newest modification time of an input file or series folder: a changed input
    is recomputed on resume (the path is recorded, but a moved cohort still resumes)."""
    try:
        files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file())
        stats = [p.stat() for p in files]
    except OSError:
        return {"path": str(path), "bytes": None, "mtime_ns": None}
    return {
        "path": str(path),
        "bytes": sum(s.st_size for s in stats),
        "mtime_ns": max((s.st_mtime_ns for s in stats), default=0),
    }


def _finished_entry(case: Case, out_dir: Path, fingerprint: dict[str, Any]) -> dict[str, Any] | None:
    """The sidecar entry of a case done before under ``fingerprint``, or None (compute it)."""
    try:
        entry = json.loads((out_dir / f"{case.id}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(entry, dict) or entry.get("status") != "done" or entry.get("fingerprint") != fingerprint:
        return None
    if not all((out_dir / str(name)).is_file() for name in entry.get("outputs", [])):
        return None
    stamp, before = _input_stamp(case.path), entry.get("input") or {}
    if stamp["bytes"] is None or (stamp["bytes"], stamp["mtime_ns"]) != (before.get("bytes"), before.get("mtime_ns")):
        return None
    return entry


def _remove_leftovers(out_dir: Path, ids: set[str]) -> None:
    """Delete the hidden temporary files (``.<id>.…``) of writes that were killed midway.

    Called only while no case of ``ids`` runs (before the cases start, after all have ended)."""
    for p in out_dir.iterdir():
        parts = p.name[1:].split(".")
        if p.name.startswith(".") and any(".".join(parts[:k]) in ids for k in range(1, len(parts))):
            try:
                p.unlink()
            except OSError:
                pass  # gone already, or not ours to remove


# -- serial and distributed ----------------------------------------------------------------------


def _run_serial(
    todo: list[Case], task: CohortTask, out_dir: Path, fingerprint: dict[str, Any], should_stop: ShouldStop | None
) -> Iterator[dict[str, Any]]:
    """In this process, one case after another; ``task.load()`` once, when first needed."""
    loaded: list[Any] = []

    def state() -> Any:
        if not loaded:
            loaded.append(task.load())
        return loaded[0]

    for case in todo:
        check_stop(should_stop)
        yield _run_case(task, case, out_dir, fingerprint, state)


def _run_distributed(
    todo: list[Case],
    task: CohortTask,
    out_dir: Path,
    fingerprint: dict[str, Any],
    scheduler: str,
    workers: int | None,
    should_stop: ShouldStop | None,
) -> Iterator[dict[str, Any]]:
    """On dask workers, entries as cases complete; ``should_stop`` is polled after each.

    Tasks are impure (``pure=False``): each submission runs. A worker that dies mid-case has its
    case rescheduled by the scheduler on another (or restarted) worker."""
    import uuid

    from distributed import as_completed

    with _client(scheduler, workers) as client:
        run_id = uuid.uuid4().hex[:8]
        futures = {
            client.submit(
                _run_case_on_worker, task, case, out_dir, fingerprint,
                key=f"medloop-cohort-{case.id}-{run_id}", pure=False, retries=RETRIES,
            ): case
            for case in todo
        }
        try:
            for future in as_completed(list(futures), loop=client.loop):
                yield _entry_of(future, futures[future], fingerprint)
                check_stop(should_stop)
        finally:
            client.cancel(list(futures))  # no-op for finished ones; on stop, the rest never start


def _entry_of(future: Any, case: Case, fingerprint: dict[str, Any]) -> dict[str, Any]:
    """The entry a worker returned, or a failure when the case could not run at all (its
    workers kept dying, the cluster went away)."""
    try:
        return future.result()
    except Exception as exc:
        return {
            "case": case.id, "input": {"path": str(case.path)}, "fingerprint": fingerprint,
            "status": "failed", "error": f"{case.path}: {one_line(exc)}",
        }


@contextmanager
def _client(scheduler: str, workers: int | None) -> Iterator[Any]:
    """A client of a LocalCluster owned by this call (``"local"``), or of an existing scheduler.

    ``set_as_default=False``: other dask work in this process (a slide's lazy pyramid) must not
    move onto the cohort's cluster."""
    import logging

    from distributed import Client, LocalCluster

    if workers is not None and int(workers) < 1:
        raise CohortError(f"workers must be at least 1, got {workers}")
    if scheduler == "local":
        with _quiet("distributed"), _own_environ(), _local_worker_environ(), LocalCluster(
            n_workers=int(workers or 2), threads_per_worker=1, processes=True,
            dashboard_address=None, silence_logs=logging.ERROR,  # workers' chatter too
        ) as cluster, Client(cluster, set_as_default=False) as client:
            yield client
        return
    try:
        client = Client(scheduler, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        raise CohortError(
            f"cannot reach the dask scheduler at {scheduler} ({one_line(exc)}); check the address "
            "or start one with 'dask scheduler'"
        ) from None
    with client:
        try:
            client.wait_for_workers(int(workers or 1), timeout=CONNECT_TIMEOUT_S)
        except TimeoutError:
            raise CohortError(
                f"the dask scheduler at {scheduler} has fewer than {workers or 1} worker(s) after "
                f"{CONNECT_TIMEOUT_S} s; start them with 'dask worker {scheduler}'"
            ) from None
        yield client


@contextmanager
def _local_worker_environ() -> Iterator[None]:
    """Workers of our LocalCluster keep glibc's dynamic malloc trimming: dask's default
    ``MALLOC_TRIM_THRESHOLD_=65536`` (set before it spawns a worker) made ``segment()`` of the
    brain sample 1.4-1.9x slower on the 2-core test machine (large tensors mapped and unmapped
    on every slice). Its ``OMP_NUM_THREADS=1`` etc. stay: each worker has one thread."""
    import dask

    with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
        yield


@contextmanager
def _own_environ() -> Iterator[None]:
    """Give back ``os.environ`` as it was: a dask nanny writes its workers' variables
    (``OMP_NUM_THREADS=1``, ...) into this process's environment, where every later subprocess
    (a CLI call, a training run) would inherit them."""
    before = dict(os.environ)
    try:
        yield
    finally:
        for key in [k for k in os.environ if k not in before]:
            del os.environ[key]
        for key, value in before.items():
            if os.environ.get(key) != value:
                os.environ[key] = value


@contextmanager
def _quiet(name: str) -> Iterator[None]:
    """Only errors from logger ``name`` while the block runs: the scheduler and nannies of a
    cluster we own log every start, stop and restarted worker, which is ours to hide."""
    import logging

    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


# -- cases from the command line -----------------------------------------------------------------


def cases_from(source: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Case]:
    """Cases from a folder (every image file in it, sorted, and each subfolder holding DICOM
    files as one series), a text list file (one path per line; ``#`` comments; relative paths
    are relative to the list) or a list of paths (files or DICOM folders).

    Ids come from the file names (``sub-01.nii.gz`` -> ``sub-01``); names shared by several
    inputs take as many parent folders as needed (``a/t1.nii.gz`` -> ``a_t1``).

    Raises:
        CohortError: a missing path, an empty folder or list.
    """
    if isinstance(source, (str, os.PathLike)):
        root = Path(source)
        if not root.exists():
            raise CohortError(f"cannot find {root}: no such file or folder; check the path")
        if root.is_dir():
            paths = _folder_inputs(root)
        elif _is_image_name(root):
            paths = [root]
        else:
            paths = _list_file_inputs(root)
    else:
        paths = [Path(p) for p in source]
    if not paths:
        raise CohortError("no inputs given; name a folder of images, a list file or image paths")
    for p in paths:
        if not p.exists():
            raise CohortError(f"cannot find {p}: no such file or folder; check the path")
    repeated = sorted(str(p) for p, n in Counter(p.absolute() for p in paths).items() if n > 1)
    if repeated:
        raise CohortError(f"inputs listed more than once: {', '.join(repeated)}; list each once")
    return [Case(i, p) for i, p in zip(case_ids(paths), paths)]


def _is_image_name(path: Path) -> bool:
    from medloop.app.io.read import suffix_of, supported_suffixes

    return suffix_of(path) in supported_suffixes()


def _folder_inputs(folder: Path) -> list[Path]:
    from medloop.app.io.dicom import is_dicom_file

    inputs = []
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue  # hidden files, our own temporary files
        if p.is_file() and _is_image_name(p):
            inputs.append(p)
        elif p.is_dir() and any(_is_dicom(f, is_dicom_file) for f in islice(p.iterdir(), 50)):
            inputs.append(p)  # a series: one case (a few files decide; an output folder is not read whole)
    if not inputs:
        raise CohortError(
            f"no images in {folder}: it holds no image files (.nii.gz, .nrrd, .mha, .dcm, .tif, .png, ...) "
            "and no DICOM series subfolders; check the folder"
        )
    return inputs


def _is_dicom(path: Path, is_dicom_file: Callable[[Path], bool]) -> bool:
    return path.is_file() and (path.suffix.lower() == ".dcm" or is_dicom_file(path))


def _list_file_inputs(listing: Path) -> list[Path]:
    try:
        lines = listing.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise CohortError(f"cannot read the list file {listing} ({exc}); give a text file with one path per line") from None
    paths = []
    for line in lines:
        text = line.split("#", 1)[0].strip()
        if text:
            p = Path(text).expanduser()
            paths.append(p if p.is_absolute() else listing.parent / p)
    if not paths:
        raise CohortError(f"the list file {listing} names no inputs; write one image path per line")
    return paths


def case_ids(paths: list[Path]) -> list[str]:
    """Stable, unique, file-safe ids from the input names (see :func:`cases_from`)."""
    from medloop.app.io.read import suffix_of

    parts = [list(p.absolute().parts[1:]) for p in paths]
    for names, p in zip(parts, paths):
        suffix = "" if p.is_dir() else suffix_of(p)
        names[-1] = names[-1][: len(names[-1]) - len(suffix)] if suffix else names[-1]
    depth = [1] * len(paths)

    def ids() -> list[str]:
        return ["_".join(_ID_UNSAFE.sub("_", n).strip("_") or "case" for n in names[-k:]) for names, k in zip(parts, depth)]

    current = ids()
    while True:
        counts = Counter(current)
        grow = [i for i, c in enumerate(current) if counts[c] > 1 and depth[i] < len(parts[i])]
        if not grow:
            break
        for i in grow:
            depth[i] += 1
        current = ids()
    counts = Counter(current)  # same folder and name, another type (a.nii.gz, a.nrrd): add the type
    return [c + (_ID_UNSAFE.sub("_", suffix_of(p)) if counts[c] > 1 else "") for c, p in zip(current, paths)]
