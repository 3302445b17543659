"""Versioned retrained models: every successful retrain becomes ``v<N>`` beside its base model.

Layout under ``root`` (a user models folder)::

    <root>/<base name>/v1/weights.pt + card.json     card name "<base name>@v1", version "1"
    <root>/<base name>/v2/...
    <root>/<base name>/versions.json                  {"current": N}  (0 = the base model)

A version's card is its parent's card (the base's for v1) with ``name``, ``version``,
``parent`` ("<base name>@v<P>", or the base's name for P = 0), ``weights`` (file and sha256)
and ``training`` (annotation counts, metrics, note, UTC time, parent version) replaced. A
version folder is written in a hidden temporary folder and renamed into place, so it appears
whole or not at all; versions are never deleted or rewritten, and rollback only moves
``current``. Loading goes through :func:`medloop.models.registry.build_model`, which checks the
sha256 recorded in the card.

The registry's ``get_model(name, models_dir)`` looks one folder deep only, so a version is
reached with :meth:`ModelVersions.entry`/:meth:`ModelVersions.load`, :func:`get_version`
(``"<name>@v<N>"``), or ``get_model(<version folder path>)``.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from medloop.app.errors import MedloopError
from medloop.models.card import CARD_FILE, read_card, write_card
from medloop.models.registry import (
    ModelEntry,
    ModelNotFoundError,
    build_model,
    sha256_of,
)

__all__ = ["VERSION_PATTERN", "ModelVersions", "get_version", "split_version_name"]

WEIGHTS_FILE = "weights.pt"
STATE_FILE = "versions.json"
VERSION_PATTERN = re.compile(r"^v([1-9][0-9]*)$")
_NAME_PATTERN = re.compile(r"^(?P<base>.+)@v(?P<n>[0-9]+)$")


def split_version_name(name: str) -> tuple[str, int]:
    """``"brain@v3"`` -> ``("brain", 3)``; a name without ``@v<N>`` -> ``(name, 0)`` (the base)."""
    m = _NAME_PATTERN.match(name)
    return (m["base"], int(m["n"])) if m else (name, 0)


def _jsonable(value: Any) -> Any:
    """Numbers, strings, lists and dicts as JSON can hold them (numpy scalars, NaN -> None)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


class ModelVersions:
    """The retrained versions of ``base`` kept under ``root``.

    ``current`` is the version in use (0 = ``base`` itself until the first save). ``save``
    adds ``v<N+1>`` (parent = ``current``) and makes it current; ``rollback`` makes an earlier
    version current without deleting anything.
    """

    def __init__(self, root: Path, base: ModelEntry):
        self.root = Path(root)
        self.base = base
        self.folder = self.root / base.name

    # ---------------------------------------------------------------------- queries

    def list(self) -> list[int]:
        """Version numbers present on disk, ascending (the base, 0, is not listed)."""
        if not self.folder.is_dir():
            return []
        found = []
        for p in self.folder.iterdir():
            m = VERSION_PATTERN.match(p.name)
            if m and (p / CARD_FILE).is_file():
                found.append(int(m[1]))
        return sorted(found)

    def name_of(self, version: int) -> str:
        return self.base.name if version == 0 else f"{self.base.name}@v{int(version)}"

    @property
    def current(self) -> int:
        """The version in use; 0 (the base) when none was saved or the state file is missing."""
        path = self.folder / STATE_FILE
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
            version = int(state["current"])
        except FileNotFoundError:
            return 0
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise MedloopError(f"version state {path} is unreadable ({exc}); delete it to fall back to the latest version") from None
        if version != 0 and version not in self.list():
            raise MedloopError(f"version state {path} names v{version}, which does not exist; delete the file")
        return version

    @property
    def current_entry(self) -> ModelEntry:
        return self.entry(self.current)

    def entry(self, version: int) -> ModelEntry:
        """The :class:`ModelEntry` of ``version`` (0 = the base)."""
        version = int(version)
        if version == 0:
            return self.base
        folder = self.folder / f"v{version}"
        if not (folder / CARD_FILE).is_file():
            have = ", ".join(f"v{v}" for v in self.list()) or "none"
            raise ModelNotFoundError(f"{self.base.name} has no version v{version}; versions: {have}")
        card = read_card(folder / CARD_FILE)
        return ModelEntry(card.name, folder, card, packaged=False)

    def parent(self, version: int) -> int:
        """The version ``version`` was trained from (0 = the base)."""
        if int(version) == 0:
            raise ValueError("the base model has no parent version")
        return int(self.entry(version).card.raw["training"]["parent_version"])

    def load(self, version: int | None = None, device: Any = "cpu"):
        """The network of ``version`` (default: current), sha256-checked, in eval mode."""
        return build_model(self.entry(self.current if version is None else version), device)

    # ---------------------------------------------------------------------- changes

    def save(
        self,
        network: Any,
        metrics: dict[str, Any] | None = None,
        annotation_counts: dict[str, Any] | None = None,
        note: str = "",
    ) -> ModelEntry:
        """Store ``network``'s weights as the next version (parent = current) and make it current."""
        import torch

        self.folder.mkdir(parents=True, exist_ok=True)
        parent = self.current
        parent_card = self.entry(parent).card
        state = {k: v.detach().to("cpu", copy=True) for k, v in network.state_dict().items()}
        tmp = Path(tempfile.mkdtemp(prefix=".new-version.", dir=self.folder))
        try:
            weights = tmp / WEIGHTS_FILE
            torch.save(state, weights)
            raw = copy.deepcopy(dict(parent_card.raw))
            while True:
                version = max(self.list(), default=0) + 1
                raw["name"] = self.name_of(version)
                raw["version"] = str(version)
                raw["parent"] = self.name_of(parent)
                raw["weights"] = {
                    **raw["weights"],
                    "format": "pytorch_state_dict",
                    "source": WEIGHTS_FILE,
                    "sha256": sha256_of(weights),
                }
                raw.pop("test_data", None)  # the parent's reference outputs no longer apply
                raw["training"] = _jsonable(
                    {
                        "base": self.base.name,
                        "parent_version": parent,
                        "annotation_counts": annotation_counts or {},
                        "metrics": metrics or {},
                        "note": note,
                        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    }
                )
                write_card(raw, tmp / CARD_FILE)
                try:
                    os.rename(tmp, self.folder / f"v{version}")  # atomic; fails if taken
                    break
                except OSError:
                    if (self.folder / f"v{version}").exists():
                        continue  # another save took this number: take the next
                    raise
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._set_current(version)
        return self.entry(version)

    def rollback(self, version: int) -> ModelEntry:
        """Make ``version`` (0 = the base) current; its weights are checked first. Nothing is deleted."""
        entry = self.entry(version)
        path = entry.weights_path
        if not path.is_file() or sha256_of(path) != entry.card.weights_sha256:
            raise MedloopError(f"cannot roll back to {entry.name}: its weights {path} are missing or damaged")
        self._set_current(int(version))
        return entry

    def _set_current(self, version: int) -> None:
        from medloop.app.io.atomic import atomic_target

        try:
            self.folder.mkdir(parents=True, exist_ok=True)  # "use base" before any version was saved
        except OSError as exc:
            raise MedloopError(f"cannot record the version in use in {self.folder} ({exc.strerror}); choose a writable models folder") from None
        with atomic_target(self.folder / STATE_FILE, suffix=".json") as tmp, open(tmp, "w", encoding="utf-8") as f:
            json.dump({"base": self.base.name, "current": int(version)}, f, indent=2)
            f.write("\n")


def get_version(name: str, root: Path, models_dir: Path | None = None) -> ModelEntry:
    """``"<base>@v<N>"`` -> that version's entry under ``root``; a plain name -> the base
    (looked up with ``get_model`` in ``models_dir``, default ``root``)."""
    from medloop.models.registry import get_model

    base_name, version = split_version_name(name)
    if version == 0:
        return get_model(name, models_dir or root)
    folder = Path(root) / base_name / f"v{version}"
    if not (folder / CARD_FILE).is_file():
        raise ModelNotFoundError(f"no version {name!r} under {root}")
    card = read_card(folder / CARD_FILE)
    return ModelEntry(card.name, folder, card, packaged=False)
