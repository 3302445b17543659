"""Stain-transfer models the user trained (Qt-free): ``<user models dir>/stain-models/<name>/v<N>/``
(a model folder that :func:`~medloop.plugins.staining.zoo.load_stain_model` opens) and
``<name>/versions.json`` ({"current": N}). A version is trained into a hidden folder and renamed
into place, so it appears whole or not at all (a cancelled or failed run leaves nothing); versions
are never rewritten, and "use this version" only moves ``current``."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medloop.models.card import CARD_FILE
from medloop.plugins.staining.checks import StainInputError

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def user_stain_root() -> Path:
    """Trained stain models live in the per-user models folder, never in the package."""
    from medloop.models.registry import user_models_dir

    return user_models_dir() / "stain-models"


def check_name(name: str) -> str:
    name = str(name).strip()
    if not NAME.match(name):
        raise StainInputError(f"model name {name!r} must be 1-64 letters, digits, '.', '_' or '-' (no spaces or slashes)")
    return name


class StainVersions:
    """The versions of one user-trained stain model ``name`` under ``root``."""

    def __init__(self, name: str, root: str | os.PathLike[str] | None = None) -> None:
        self.name = check_name(name)
        self.folder = Path(root if root is not None else user_stain_root()) / self.name

    def list(self) -> list[int]:
        if not self.folder.is_dir():
            return []
        return sorted(int(p.name[1:]) for p in self.folder.iterdir()
                      if p.name[:1] == "v" and p.name[1:].isdigit() and (p / CARD_FILE).is_file())

    def path(self, version: int) -> Path:
        return self.folder / f"v{int(version)}"

    @property
    def current(self) -> int:
        """The version in use (0: none yet); the newest when the state file is missing or stale."""
        versions = self.list()
        try:
            version = int(json.loads((self.folder / "versions.json").read_text(encoding="utf-8"))["current"])
        except (OSError, ValueError, KeyError, TypeError):
            version = 0
        return version if version in versions else (versions[-1] if versions else 0)

    def train(self, fit: Callable[[Path, int], Any]) -> int:
        """``fit(folder, version)`` writes a model into a hidden folder; it becomes ``v<N+1>`` (and
        current) only when ``fit`` returns. Any exception (a cancel included) removes it."""
        self.folder.mkdir(parents=True, exist_ok=True)
        version = (max(self.list()) if self.list() else 0) + 1
        tmp = Path(tempfile.mkdtemp(prefix=f".v{version}.", dir=self.folder))
        try:
            fit(tmp, version)
            os.replace(tmp, self.path(version))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self.use(version)
        return version

    def use(self, version: int) -> None:
        from medloop.app.io.atomic import atomic_write_text

        if int(version) not in self.list():
            raise StainInputError(f"stain model {self.name} has no version v{version}; choose one of {[f'v{v}' for v in self.list()]}")
        atomic_write_text(self.folder / "versions.json", json.dumps({"current": int(version)}))


def list_user_models(root: str | os.PathLike[str] | None = None) -> list[tuple[str, int, Path]]:
    """Every user-trained stain-transfer model version: ``(name, version, folder)``, by name then version."""
    base = Path(root if root is not None else user_stain_root())
    if not base.is_dir():
        return []
    out = []
    for folder in sorted(p for p in base.iterdir() if p.is_dir() and NAME.match(p.name)):
        for v in StainVersions(folder.name, base).list():
            out.append((folder.name, v, folder / f"v{v}"))
    return out
