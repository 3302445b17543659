"""Choosing the torch device and the mixed-precision context inference runs under."""

from __future__ import annotations

import contextlib
import contextvars
import re
from typing import Any, ContextManager

import torch

from medloop.app.errors import MedloopError

_CUDA_RE = re.compile(r"^cuda(?::(\d+))?$")


class DeviceError(MedloopError):
    """The requested compute device does not exist on this machine (or is not a device name)."""


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def available_devices() -> list[str]:
    """Device names usable here: ``"cpu"``, then ``"cuda:0"``.. ``"cuda:N-1"``, then ``"mps"``."""
    names = ["cpu"]
    if torch.cuda.is_available():
        names += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if _mps_available():
        names.append("mps")
    return names


def choose_device(preference: str = "auto") -> torch.device:
    """The torch device for ``preference``.

    ``"auto"`` picks CUDA (the current GPU), then Apple's MPS, then the CPU. ``"cpu"``,
    ``"cuda"``, ``"cuda:N"`` and ``"mps"`` are honoured exactly; a GPU that is not there is an
    error rather than a silent fallback to the (much slower) CPU.

    Raises:
        DeviceError: the device is not available, or ``preference`` is not a device name; the
            message names it and lists the available devices.
    """
    pref = str(preference).strip().lower()
    if pref == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if pref == "cpu":
        return torch.device("cpu")
    match = _CUDA_RE.match(pref)
    if match:
        if not torch.cuda.is_available():
            built = torch.version.cuda is not None or getattr(torch.version, "hip", None) is not None
            reason = (
                "no CUDA GPU is visible (check the NVIDIA driver and CUDA_VISIBLE_DEVICES)"
                if built
                else f"this PyTorch build ({torch.__version__}) has no CUDA support"
            )
            raise DeviceError(_unavailable(preference, reason))
        if match.group(1) is not None:
            index, count = int(match.group(1)), torch.cuda.device_count()
            if index >= count:
                raise DeviceError(
                    _unavailable(preference, f"this machine has {count} CUDA GPU{'s' * (count != 1)}")
                )
            return torch.device("cuda", index)
        return torch.device("cuda")
    if pref == "mps":
        if not _mps_available():
            raise DeviceError(_unavailable(preference, "Apple MPS is not available on this machine"))
        return torch.device("mps")
    raise DeviceError(
        f"unknown device {preference!r}; use auto, cpu, cuda, cuda:N or mps "
        f"(available devices: {', '.join(available_devices())})"
    )


def _unavailable(preference: str, reason: str) -> str:
    return (
        f"cannot use device {preference!r}: {reason}; available devices: "
        f"{', '.join(available_devices())}"
    )


def autocast_for(device: torch.device | str, enabled: bool | None = None) -> ContextManager[Any]:
    """The mixed-precision context for running a network on ``device``.

    ``enabled=None`` means on for CUDA only (bfloat16 where the GPU supports it, else float16):
    on CPUs reduced precision is usually slower and changes results, so it is off unless asked
    (``enabled=True`` then uses bfloat16; on MPS float16). Disabled, this is a no-op context.
    """
    dev = torch.device(device)
    on = dev.type == "cuda" if enabled is None else bool(enabled)
    if not on:
        return contextlib.nullcontext()
    if dev.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    elif dev.type == "mps":
        dtype = torch.float16
    else:
        dtype = torch.bfloat16
    return torch.autocast(device_type=dev.type, dtype=dtype)


def available_cores() -> int:
    """The CPU cores this process may run on."""
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_cpu_threads() -> int:
    """Torch CPU threads for compute run from the command line or a cohort worker: every core
    (issue #20: one core fewer left half of a 2-core machine idle; 2 threads were 1.93x faster
    on the sample)."""
    return available_cores()


def gui_cpu_threads() -> int:
    """Torch CPU threads for a job started from the GUI: one core fewer than the machine has,
    at least 1, so the event loop keeps a core while the job runs (two torch threads beside a
    busy GUI ran 3-14x slower than one on the 2-core test machine)."""
    return max(1, available_cores() - 1)


#: Torch threads compute may use in this context (a GUI job's worker sets it; None: every core).
_BUDGET: contextvars.ContextVar[int | None] = contextvars.ContextVar("medloop_thread_budget", default=None)


@contextlib.contextmanager
def thread_budget(n: int | None):
    """Within the block (this thread or task), compute asking for the default thread count
    gets ``n`` threads: how a GUI job leaves the event loop a core (:func:`gui_cpu_threads`)."""
    token = _BUDGET.set(n)
    try:
        yield
    finally:
        _BUDGET.reset(token)


@contextlib.contextmanager
def torch_threads(n: int | None = None):
    """Run a block with ``n`` torch CPU threads (None: the :func:`thread_budget` in force, else
    :func:`default_cpu_threads`), then restore the previous count (torch's count is process-wide)."""
    old = torch.get_num_threads()
    torch.set_num_threads(int(n) if n else (_BUDGET.get() or default_cpu_threads()))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _cpu_layout(module: Any) -> torch.memory_format | None:
    """The channels-last format that fits ``module``'s convolutions, if it runs on the CPU."""
    if not isinstance(module, torch.nn.Module):
        return None
    first = next(module.parameters(), None)
    if first is None or first.device.type != "cpu":
        return None
    convs = [m for m in module.modules() if isinstance(m, torch.nn.modules.conv._ConvNd)]
    if any(c.weight.dim() == 5 for c in convs):
        return torch.channels_last_3d
    if any(c.weight.dim() == 4 for c in convs):
        return torch.channels_last
    return None


@contextlib.contextmanager
def channels_last_on_cpu(*modules: Any):
    """Run a block with the CPU networks among ``modules`` in channels-last layout, then put
    them back (contiguous).

    oneDNN convolves channels-last tensors faster (``benchmarks/bench_cpu_layout.py``, one thread):
    ``segment()`` 1.17x faster with the packaged 2-D brain model, 1.26x with seed 000 upscaling,
    1.20x with a 3-D U-Net; training steps 1.30x (3-D) and 0.98-1.2x (2-D). Without it a batch of
    four 512^2 images cost 6x one image instead of 4x (activations outgrow the cache). Results
    differ by float rounding only (a few voxels in a million flip at exact ties). Layouts change
    for the duration of the block only."""
    changed = []
    for module in modules:
        layout = _cpu_layout(module)
        if layout is not None:
            module.to(memory_format=layout)
            changed.append(module)
    try:
        yield
    finally:
        for module in changed:
            module.to(memory_format=torch.contiguous_format)
