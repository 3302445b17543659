"""Never lose an annotation: label layers are saved, debounced and atomically, while they are
painted, and restored when their image is opened again.

* :class:`AnnotationStore` knows where the annotations of an image live (``<image folder>/.medloop/``
  by default, or a project folder) and reads and writes them as NIfTI with the image's geometry.
* :class:`Autosaver` is told about every edit (:meth:`Autosaver.changed`) and saves from one
  background thread at most ``delay`` seconds after the first unsaved edit, so a process killed
  while painting loses at most the last ``delay`` seconds (plus one save's duration).

Files are written through :func:`medloop.app.io.atomic.atomic_target`: a temporary file beside
the target is renamed over it, so the annotation on disk is always a complete, readable file.
After a SIGKILL during a write the temporary file (``.<name>.<random>.nii.gz``) remains, because
the clean-up in ``atomic_target`` never runs; :class:`AnnotationStore` deletes such leftovers
older than :data:`STALE_TEMP_SECONDS` when it is opened.

Only :meth:`AnnotationStore.save` writes annotation files; training and prediction read them
(:meth:`AnnotationStore.load`) and write their outputs elsewhere. :func:`is_annotation_path`
lets writers refuse to overwrite one.

Qt-free: the GUI connects a Labels layer's ``events.paint``/``events.data`` to ``changed``.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import threading
import time
import warnings
import weakref
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from urllib.parse import quote, unquote

import numpy as np

from medloop.app.errors import ImageMismatchError, MedloopError, MedloopWarning
from medloop.app.io.image import MedImage

ANNOTATION_SUFFIX = ".annotation.nii.gz"
TABLE_SUFFIX = ".annotation.csv"  # boxes and points: one row per shape, array (data) coordinates
PROJECT_SUBFOLDER = ".medloop"
# Temporary files of interrupted writes older than this are deleted when a store is opened.
STALE_TEMP_SECONDS = 60.0


def is_annotation_path(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an autosaved annotation (which only :class:`AnnotationStore` writes)."""
    return Path(path).name.endswith(ANNOTATION_SUFFIX)


def _user_annotation_folder() -> Path:
    import platformdirs

    return Path(platformdirs.user_data_dir("medloop")) / "annotations"


def _writable_dir(folder: Path) -> bool:
    return folder.is_dir() and os.access(folder, os.W_OK | os.X_OK)


def _package_folder() -> Path:
    """The folder of the medloop package itself (installed or a source checkout)."""
    return Path(__file__).resolve().parents[2]  # medloop/app/io/autosave.py -> medloop/


def inside_package(path: str | os.PathLike) -> bool:
    """Whether ``path`` lies in the medloop package (its packaged samples and models): nothing a
    user makes is ever written there, even where the folder is writable (a source checkout)."""
    try:
        Path(path).resolve().relative_to(_package_folder())
    except ValueError:
        return False
    return True


def _quote(text: str, dots: bool) -> str:
    q = quote(text, safe=" -_+,=@()[]")
    if q.startswith("."):
        q = "%2E" + q[1:]  # never a hidden file
    return q.replace(".", "%2E") if dots else q


def geometry_key(image: MedImage) -> str:
    """A content hash of an image's shape and geometry (for images that have no path)."""
    parts = [
        "x".join(map(str, image.shape[: image.ndim])),
        " ".join(f"{v:.6g}" for v in image.spacing),
        " ".join(f"{v:.6g}" for v in image.origin),
        " ".join(f"{v:.6f}" for v in np.asarray(image.direction).ravel() + 0.0),
        image.unit,
    ]
    return "image-" + hashlib.sha1("|".join(parts).encode()).hexdigest()[:12]


#: Layer-name contract of the Correction panel's annotation layers, one per kind: a method that
#: prepares a starting annotation (e.g. anomaly pseudo-labels) saves it under the same name, so
#: Correction restores it without either plugin importing the other.
ANNOTATION_LAYER_SUFFIX = {"strokes": "annotations", "boxes": "boxes", "points": "points"}


def annotation_layer_name(image_name: str, kind: str = "strokes") -> str:
    """The name of ``image_name``'s Correction annotation layer of ``kind``."""
    return f"{image_name} {ANNOTATION_LAYER_SUFFIX[kind]}"


class AnnotationStore:
    """Where the annotations of images live: one NIfTI file per (image, layer name).

    File names are ``<image key>.<layer name>.annotation.nii.gz``. The image key is the image's
    path relative to the folder holding the store (``<folder>/..``) with ``/`` written ``__`` and
    its suffix removed, so it is the plain stem for the default ``<image folder>/.medloop`` store
    and stays valid when a project folder is moved as a whole; an image outside that folder gets
    its stem plus a hash of its absolute path (two ``imaging.nii.gz`` of different cases never
    share a file); an image without a path gets a hash of its shape and geometry.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.removed_temps: list[Path] = []
        self.clean_stale_temps()

    @staticmethod
    def default_folder(image: MedImage) -> Path:
        """``<image folder>/.medloop`` when that can be written, else the per-user data folder
        (also for the packaged samples and any other image inside the medloop package)."""
        if image.path and not inside_package(image.path):
            parent = Path(image.path).absolute().parent  # a DICOM series folder: beside it
            own = parent / PROJECT_SUBFOLDER
            if (own.is_dir() and _writable_dir(own)) or (not own.exists() and _writable_dir(parent)):
                return own
        return _user_annotation_folder()

    @classmethod
    def for_image(cls, image: MedImage) -> AnnotationStore:
        return cls(cls.default_folder(image))

    # -- names -------------------------------------------------------------------------------
    def image_key(self, image: MedImage) -> str:
        if not image.path:
            return geometry_key(image)
        from medloop.app.io.read import suffix_of

        p = Path(image.path).absolute()
        suffix = "" if p.is_dir() else suffix_of(p)
        stem = p.name[: len(p.name) - len(suffix)] if suffix else p.name
        base = self.folder.absolute().parent
        try:
            rel = p.parent.relative_to(base)
        except ValueError:
            digest = hashlib.sha1(str(p).encode()).hexdigest()[:8]
            return _quote(f"{stem}-{digest}", dots=True)
        return _quote("__".join([*rel.parts, stem]), dots=True)

    def path_for(self, image: MedImage, name: str) -> Path:
        if not name:
            raise ValueError("an annotation needs a layer name")
        return self.folder / f"{self.image_key(image)}.{_quote(name, dots=False)}{ANNOTATION_SUFFIX}"

    def list(self, image: MedImage) -> list[str]:
        """Layer names saved for ``image``, sorted."""
        prefix = self.image_key(image) + "."
        if not self.folder.is_dir():
            return []
        names = []
        for p in self.folder.iterdir():
            n = p.name
            if n.startswith(prefix) and n.endswith(ANNOTATION_SUFFIX) and len(n) > len(prefix) + len(ANNOTATION_SUFFIX):
                names.append(unquote(n[len(prefix) : -len(ANNOTATION_SUFFIX)]))
        return sorted(names)

    # -- reading and writing -----------------------------------------------------------------
    def save(self, image: MedImage, name: str, labels: np.ndarray) -> Path:
        """Write ``labels`` with ``image``'s geometry; the file is replaced atomically.

        Raises:
            ImageWriteError: the folder cannot be created or written.
            ValueError: ``labels`` does not have the image's spatial shape.
        """
        from medloop.app.errors import ImageWriteError
        from medloop.app.io.write import write_image

        target = self.path_for(image, name)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ImageWriteError(f"cannot write {target}: cannot create {self.folder} ({exc.strerror})") from None
        arr = np.asarray(labels)
        if arr.dtype == bool:
            arr = arr.astype(np.uint8)
        labels_image = image.with_array(arr, channel_axis=False, path=str(target), metadata={})
        return write_image(labels_image, target)

    def load(self, image: MedImage, name: str) -> np.ndarray | None:
        """The saved labels of ``image``'s layer ``name``, or None when there are none usable.

        A file that cannot be read or lies on another grid is reported with a
        :class:`MedloopWarning` and left in place (never deleted).
        """
        from medloop.app.io.read import read_image
        from medloop.app.io.validate import check_same_grid

        p = self.path_for(image, name)
        if not p.is_file():
            return None
        try:
            saved = read_image(p)
            if image.unit == "um" and saved.unit == "mm":  # ITK files are always millimetres
                saved = replace(
                    saved,
                    spacing=tuple(s * 1000 for s in saved.spacing),
                    origin=tuple(o * 1000 for o in saved.origin),
                    unit="um",
                )
            check_same_grid(image, saved)
        except ImageMismatchError as exc:
            warnings.warn(f"ignoring saved annotation {p}: {exc}", MedloopWarning, stacklevel=2)
            return None
        except MedloopError as exc:
            warnings.warn(f"ignoring saved annotation {p}: {exc}", MedloopWarning, stacklevel=2)
            return None
        return np.asarray(saved.array)

    def sidecar_path(self, image: MedImage, name: str, suffix: str) -> Path:
        """``<image key>.<layer name><suffix>``: another file kept beside a layer's annotation
        (an interactive session's prompt log)."""
        if not name:
            raise ValueError("an annotation needs a layer name")
        return self.folder / f"{self.image_key(image)}.{_quote(name, dots=False)}{suffix}"

    def table_path_for(self, image: MedImage, name: str) -> Path:
        if not name:
            raise ValueError("an annotation needs a layer name")
        return self.folder / f"{self.image_key(image)}.{_quote(name, dots=False)}{TABLE_SUFFIX}"

    def save_table(self, image: MedImage, name: str, rows: np.ndarray) -> Path:
        """Write boxes or points (``(N, D)`` numbers in the image's array coordinates) as CSV,
        replacing the file atomically. The header names the axes (``axis-0``, ...)."""
        from medloop.app.errors import ImageWriteError
        from medloop.app.io.atomic import atomic_target

        target = self.table_path_for(image, name)
        arr = np.asarray(rows, dtype=float)
        if arr.ndim != 2:
            arr = arr.reshape(len(arr), -1) if arr.size else np.zeros((0, 0))
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with atomic_target(target, suffix=".csv") as tmp:
                header = ",".join(f"axis-{i}" for i in range(arr.shape[1]))
                np.savetxt(tmp, arr, delimiter=",", header=header, comments="", fmt="%.6g")
        except OSError as exc:
            raise ImageWriteError(f"cannot write {target} ({exc.strerror})") from None
        return target

    def load_table(self, image: MedImage, name: str) -> np.ndarray | None:
        """The saved boxes/points of ``image``'s layer ``name`` (``(N, D)`` floats), or None.
        An unreadable file is reported with a :class:`MedloopWarning` and left in place."""
        p = self.table_path_for(image, name)
        if not p.is_file():
            return None
        try:
            lines = p.read_text(encoding="utf-8").splitlines()
            columns = len(lines[0].split(",")) if lines and lines[0].strip() else 0
            body = [line for line in lines[1:] if line.strip()]
            rows = np.loadtxt(body, delimiter=",", ndmin=2) if body else np.zeros((0, columns))
        except (OSError, ValueError, IndexError) as exc:
            warnings.warn(f"ignoring saved annotation {p}: {exc}", MedloopWarning, stacklevel=2)
            return None
        return rows

    def temp_files(self) -> list[Path]:
        """Temporary files of interrupted writes (``.<name>.annotation.nii.gz.<random>.nii.gz``)."""
        if not self.folder.is_dir():
            return []
        return sorted(
            p for p in self.folder.iterdir() if p.name.startswith(".") and (ANNOTATION_SUFFIX + "." in p.name or TABLE_SUFFIX + "." in p.name)
        )

    def clean_stale_temps(self, older_than: float = STALE_TEMP_SECONDS) -> list[Path]:
        """Delete temporary files left by writes killed midway (SIGKILL, power loss)."""
        now = time.time()
        removed = []
        for p in self.temp_files():
            try:
                if now - p.stat().st_mtime > older_than:
                    p.unlink()
                    removed.append(p)
            except OSError:
                pass  # another process finished or removed it, or no permission
        self.removed_temps.extend(removed)
        return removed


def _warn(exc: BaseException) -> None:
    warnings.warn(f"annotation autosave failed: {exc}; it is retried on the next edit", MedloopWarning, stacklevel=2)


_live: weakref.WeakSet[Autosaver] = weakref.WeakSet()


@atexit.register
def _flush_all_at_exit() -> None:  # a normal exit (not SIGKILL) saves every pending edit
    for saver in list(_live):
        try:
            saver.close()
        except Exception:  # noqa: BLE001 - exiting anyway
            pass


class Autosaver:
    """Saves one label layer of one image at most ``delay`` seconds after its first unsaved edit.

    ``changed()`` is cheap and may be called on every brush stroke. One background thread does
    the saving, so two saves of the layer never overlap; the labels are copied (``get_labels()``)
    when the save starts, and edits made during a save schedule the next one. Continuous painting
    therefore still saves every ``delay`` seconds. A failed save is reported through
    ``on_error(exc)`` (default: a :class:`MedloopWarning`) and retried on the next edit or flush.
    """

    def __init__(
        self,
        store: AnnotationStore,
        image: MedImage,
        name: str,
        get_labels: Callable[[], np.ndarray],
        delay: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        on_error: Callable[[BaseException], None] | None = None,
        table: bool = False,
    ) -> None:
        self.store, self.image, self.name = store, image, name
        self.table = bool(table)  # boxes/points rows (save_table) instead of a label array
        self.get_labels = get_labels
        self.delay = float(delay)
        self.clock = clock
        self.on_error = on_error or _warn
        self.path = store.table_path_for(image, name) if table else store.path_for(image, name)
        self.last_saved: float | None = None
        self.saves = 0
        self.errors = 0
        self._cond = threading.Condition()
        self._save_lock = threading.Lock()
        self._dirty = False
        self._due: float | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"medloop-autosave-{name}", daemon=True)
        self._thread.start()
        _live.add(self)

    @property
    def dirty(self) -> bool:
        return self._dirty

    def changed(self) -> None:
        """Note an edit; a save follows within ``delay`` seconds."""
        with self._cond:
            if self._closed:
                return
            self._dirty = True
            if self._due is None:
                self._due = self.clock() + self.delay
                self._cond.notify()

    def flush(self) -> bool:
        """Save now if there are unsaved edits (waits for a save in progress). True if it saved."""
        return self._save_if_dirty()

    def close(self) -> None:
        """Save what is pending and stop the background thread."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify()
        if self._thread is not threading.current_thread():
            self._thread.join()
        self._save_if_dirty()
        _live.discard(self)

    def __enter__(self) -> Autosaver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ---------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed:
                    if self._due is not None:
                        wait = self._due - self.clock()
                        if wait <= 0:
                            break
                        self._cond.wait(min(wait, 0.25))  # short waits keep injected clocks working
                    else:
                        self._cond.wait()
                if self._closed:
                    return
            self._save_if_dirty()

    def _save_if_dirty(self) -> bool:
        with self._save_lock:
            with self._cond:
                if not self._dirty:
                    self._due = None
                    return False
                # Edits from here on are after the copy below might be taken: they mark it dirty again.
                self._dirty = False
                self._due = None
            try:
                labels = np.array(self.get_labels(), copy=True)
                (self.store.save_table if self.table else self.store.save)(self.image, self.name, labels)
            except Exception as exc:  # noqa: BLE001 - reported, and retried on the next edit
                with self._cond:
                    self._dirty = True  # not scheduled: the next edit (or flush/close) retries
                self.errors += 1
                try:
                    self.on_error(exc)
                except Exception:  # noqa: BLE001 - a broken callback must not kill the saver
                    pass
                return False
            self.saves += 1
            self.last_saved = self.clock()
            return True
