"""Which arithmetic a network runs in: fp32, or bf16 autocast where it is native and harmless.

``auto`` picks bf16 autocast on CPUs that execute it natively (AVX512-BF16 or AMX, the flags
the kernel reports, on top of torch's oneDNN bf16 support) and fp16/bf16 autocast on CUDA, but
only for a model whose card test input still gives labels agreeing >= :data:`MIN_AGREEMENT`
with fp32. That check runs once per model (weights sha256) and machine and is cached in the
per-user cache folder, so later runs pay nothing. Everywhere else ``auto`` is fp32; ``bf16``
forces autocast and ``fp32`` forbids it. The choice and its reason go into the provenance.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medloop.app.errors import MedloopError

PRECISIONS = ("auto", "fp32", "bf16")
MIN_AGREEMENT = 0.999
CACHE_NAME = "precision-checks.json"


@dataclass(frozen=True)
class Precision:
    """The arithmetic chosen: ``amp`` is what the tiling engine's autocast takes."""

    name: str  # "fp32" | "bf16" | "fp16"
    amp: bool
    reason: str
    agreement: float | None = None

    def provenance(self) -> dict[str, Any]:
        return {"precision": self.name, "precision_reason": self.reason, "precision_agreement": self.agreement}


def check_precision(value: str) -> str:
    if value not in PRECISIONS:
        raise MedloopError(f"unknown precision {value!r}; use one of {', '.join(PRECISIONS)}")
    return value


def cpu_bf16_native() -> bool:
    """Whether this CPU executes bf16 natively (AVX512-BF16 / AMX) and torch's oneDNN uses it."""
    import torch

    try:
        if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return False
    except (AttributeError, RuntimeError):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False  # no way to tell here (macOS, Windows): stay exact
    return "avx512_bf16" in flags or "amx_bf16" in flags


def reduced_name(device: Any) -> str:
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp16" if dev.type == "mps" else "bf16"


def machine_key(device: Any) -> str:
    """What the cached agreement depends on besides the model: CPU or GPU kind and torch."""
    import torch

    dev = torch.device(device)
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"{platform.machine()}-{torch.backends.cpu.get_cpu_capability()}"
    return f"{dev.type}:{where}:torch-{torch.__version__}"


def label_agreement(network: Any, test_input: np.ndarray, device: Any) -> float:
    """Share of the test input's voxels whose argmax label is the same with and without autocast."""
    import torch

    from medloop.app.engine.devices import autocast_for

    x = torch.as_tensor(np.asarray(test_input, np.float32)[None]).to(device)
    was = network.training
    network.eval()
    try:
        with torch.inference_mode():
            exact = network(x).float().argmax(1)
            with autocast_for(device, True):
                reduced = network(x).float().argmax(1)
    finally:
        network.train(was)
    return float((exact == reduced).float().mean())


def _cache_path() -> Path:
    import platformdirs

    return Path(platformdirs.user_cache_dir("medloop")) / CACHE_NAME


def _cached(path: Path) -> dict[str, float]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {str(k): float(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _store(path: Path, key: str, value: float) -> None:
    from medloop.app.io.atomic import atomic_target

    data = _cached(path)
    data[key] = value
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_target(path, suffix=".json") as tmp:
            Path(tmp).write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
    except OSError:
        pass  # a read-only cache only costs the check next time


@dataclass(frozen=True)
class ModelCheck:
    """What ``auto`` needs to know about a model: a key (name and weights sha256) and its card's
    test data file (None when the card has none), read only when the check is not cached."""

    key: str
    test_path: Path | None

    @property
    def test_input(self) -> np.ndarray | None:
        """The test input (channels first, no batch axis), or None."""
        if self.test_path is None or not self.test_path.is_file():
            return None
        with np.load(self.test_path) as data:
            return np.asarray(data["input"], np.float32) if "input" in data.files else None


def choose_precision(requested: str, device: Any, network: Any, model: ModelCheck, cache: Path | None = None) -> Precision:
    """The arithmetic to run ``network`` in on ``device`` for a ``requested`` precision."""
    import torch

    check_precision(requested)
    dev = torch.device(device)
    if requested == "fp32":
        return Precision("fp32", False, "asked for fp32")
    if requested == "bf16":
        return Precision(reduced_name(dev), True, "asked for reduced precision")
    native = dev.type == "cuda" or (dev.type == "cpu" and cpu_bf16_native())
    if not native:
        return Precision("fp32", False, f"auto: {dev.type} has no native bf16")
    path = cache or _cache_path()
    key = f"{model.key}@{machine_key(dev)}"
    agreement = _cached(path).get(key)
    if agreement is None:
        test_input = model.test_input
        if test_input is None:
            return Precision("fp32", False, "auto: the model card has no test input to check reduced precision on")
        agreement = label_agreement(network, test_input, dev)
        _store(path, key, agreement)
    if agreement >= MIN_AGREEMENT:
        return Precision(reduced_name(dev), True, f"auto: labels agree {100 * agreement:.2f} % with fp32 on the card's test input", agreement)
    return Precision("fp32", False, f"auto: only {100 * agreement:.2f} % of labels agree with fp32 on the card's test input", agreement)


def model_check(entry: Any) -> ModelCheck:
    """The :class:`ModelCheck` of a registry entry (its card's ``test_data`` file, if any)."""
    source = (entry.card.raw.get("test_data") or {}).get("source")
    return ModelCheck(f"{entry.name}:{entry.card.weights_sha256}", entry.folder / source if source else None)
