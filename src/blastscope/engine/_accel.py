"""Faster training: bf16 autocast, channels-last memory, and several processes (DDP).

Precision (``TrainConfig.precision``): ``"fp32"``; ``"bf16"``, which runs the forward pass and the
loss under ``torch.autocast(dtype=torch.bfloat16)`` while the weights, their gradients and the
optimizer stay float32 (the losses cast the network outputs to float32 before they are reduced);
or ``"auto"``, bf16 only where the hardware computes it natively: a CUDA device for which
``torch.cuda.is_bf16_supported()`` holds, or a CPU whose ``/proc/cpuinfo`` flags name
``avx512_bf16`` or ``amx_bf16`` (x86) or ``bf16`` (Arm). Elsewhere bf16 would be emulated, slower
than float32, so ``auto`` stays fp32 there (``bf16`` may still be asked for explicitly).

Several processes: ``torchrun --nproc-per-node N -m blastscope train ...`` sets ``WORLD_SIZE``,
``RANK`` and ``LOCAL_RANK``; :func:`init_distributed` then joins the process group (NCCL on CUDA,
gloo on CPU) and the trainer wraps the model in ``DistributedDataParallel``.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from blastscope._problems import BlastscopeError

__all__ = [
    "PRECISIONS",
    "cpu_has_native_bf16",
    "bf16_supported",
    "resolve_precision",
    "resolve_channels_last",
    "autocast",
    "keep_freed_memory",
    "DistInfo",
    "dist_env",
    "init_distributed",
    "ShardedSampler",
]

#: values of ``TrainConfig.precision``
PRECISIONS = ("auto", "fp32", "bf16")


def cpu_has_native_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether this CPU has bf16 instructions (read from ``/proc/cpuinfo``; False where it cannot tell).

    x86: the ``avx512_bf16`` or ``amx_bf16`` flag; Arm: ``bf16`` in ``Features``. macOS and Windows
    have no ``/proc/cpuinfo``: False (autocast would then run emulated bf16 kernels, slower than fp32).
    """
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            flags = set(value.split())
            return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})
    return False


def bf16_supported(device: torch.device) -> bool:
    """Native bf16 on ``device``: ``torch.cuda.is_bf16_supported()`` for CUDA, the CPU's flags for CPU."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        return cpu_has_native_bf16()
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"fp32"`` or ``"bf16"`` for the ``precision`` setting on ``device``.

    ``auto`` is bf16 exactly when :func:`bf16_supported`; an explicit ``bf16`` on a CUDA device
    without it raises :class:`BlastscopeError` (on a CPU it runs, emulated and slow).
    """
    if precision not in PRECISIONS:
        raise BlastscopeError(f"precision '{precision}': unknown; use auto, fp32 or bf16")
    if precision == "auto":
        return "bf16" if bf16_supported(device) else "fp32"
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise BlastscopeError(f"precision bf16: {torch.cuda.get_device_name(device)} has no bf16; use --precision fp32")
    if precision == "bf16" and device.type not in ("cpu", "cuda"):
        raise BlastscopeError(f"precision bf16: not supported on device {device}; use --precision fp32")
    return precision


def resolve_channels_last(setting: bool | str, precision: str, device: torch.device) -> bool:
    """Whether to keep the model and its inputs in channels-last memory.

    ``auto``: on with bf16 (oneDNN's and cuDNN's bf16 convolutions are channels-last kernels; in fp32
    on a CPU the reorders cost about what they save, measured in the README), off with fp32.
    """
    if isinstance(setting, bool):
        return setting
    return precision == "bf16"


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to bf16 for ``precision == "bf16"``, else a context that does nothing."""
    if precision != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


# ----------------------------------------------------------------------------------------------
# the C allocator

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
_KEEP_BYTES = 1 << 30
_ALLOCATOR_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES", "LD_PRELOAD")
_kept: bool | None = None


def keep_freed_memory(environ: dict[str, str] | None = None) -> bool:
    """Have glibc's ``malloc`` keep and reuse freed memory instead of handing it back to the system.

    A CPU training step allocates and frees the same large activation tensors every time. glibc
    serves a block above its mmap threshold with a fresh ``mmap`` and unmaps it on ``free``, so each
    step page-faults and zeroes that memory again (here: 2.7-3.4 s of system time in a 15 s run of 34
    bf16 yolov3-tiny steps, 0.8-1.1 s with this setting). With the mmap and trim thresholds at 1 GiB
    (``mallopt(M_MMAP_THRESHOLD)``, ``mallopt(M_TRIM_THRESHOLD)``) freed blocks stay in the heap and
    are reused: about 10% more images/s (README, "Faster training"). The cost: the process keeps
    its peak memory until it ends, as jemalloc or tcmalloc would.

    Process-wide and done once; True when in effect. A no-op (False) off Linux glibc, and where the
    user chose the allocator: any of ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``,
    ``MALLOC_TOP_PAD_``, ``GLIBC_TUNABLES`` or ``LD_PRELOAD`` set.
    """
    global _kept
    if _kept is not None:
        return _kept
    env = os.environ if environ is None else environ
    _kept = False
    if any(env.get(name) for name in _ALLOCATOR_ENV):
        return False
    import platform

    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    _kept = bool(mallopt(_M_MMAP_THRESHOLD, _KEEP_BYTES)) and bool(mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES))
    return _kept


# ----------------------------------------------------------------------------------------------
# several processes


@dataclass(frozen=True)
class DistInfo:
    """The process's place in a ``torchrun`` job (world 1, rank 0 for a plain run)."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_env(environ: dict[str, str] | None = None) -> DistInfo:
    """The ``WORLD_SIZE`` / ``RANK`` / ``LOCAL_RANK`` that ``torchrun`` sets (world 1 without them)."""
    env = os.environ if environ is None else environ
    try:
        world = int(env.get("WORLD_SIZE", "1") or 1)
        rank = int(env.get("RANK", "0") or 0)
        local = int(env.get("LOCAL_RANK", str(rank)) or 0)
    except ValueError:
        raise BlastscopeError(
            f"WORLD_SIZE={env.get('WORLD_SIZE')!r} RANK={env.get('RANK')!r} LOCAL_RANK={env.get('LOCAL_RANK')!r}: "
            "not integers; start several processes with 'torchrun --nproc-per-node N -m blastscope train ...'"
        ) from None
    if world < 1 or not 0 <= rank < world:
        raise BlastscopeError(f"WORLD_SIZE={world} RANK={rank}: rank out of range; start the job with torchrun")
    return DistInfo(world, rank, local)


def init_distributed(info: DistInfo, device: torch.device) -> torch.device:
    """Join the process group of ``info`` (NCCL for CUDA, gloo for CPU); returns this process's device.

    On CUDA each process takes ``cuda:LOCAL_RANK``. Call :func:`torch.distributed.destroy_process_group`
    at the end (the trainer does).
    """
    import torch.distributed as dist

    if not dist.is_available():
        raise BlastscopeError("this torch build has no torch.distributed; train in one process (plain 'blastscope train')")
    if device.type == "cuda":
        if info.local_rank >= torch.cuda.device_count():
            raise BlastscopeError(
                f"LOCAL_RANK {info.local_rank}: only {torch.cuda.device_count()} CUDA device(s); "
                "use --nproc-per-node at most the number of GPUs"
            )
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, world_size=info.world_size, rank=info.rank)
    return device


class ShardedSampler(torch.utils.data.Sampler[int]):
    """Rank ``rank``'s share of the indices that ``base`` draws (the same draw on every rank).

    ``base`` (a seeded shuffle or a seeded :class:`~torch.utils.data.WeightedRandomSampler`) must
    give the same sequence on every process, which it does when its generator is seeded from the
    run's seed and the epoch. The sequence is padded by repeating its start to a multiple of
    ``world_size``, so every rank gets ``ceil(len(base) / world_size)`` indices (DDP needs equal
    step counts), as :class:`~torch.utils.data.distributed.DistributedSampler` does.
    """

    def __init__(self, base: torch.utils.data.Sampler[int], *, rank: int, world_size: int):
        self.base, self.rank, self.world_size = base, int(rank), int(world_size)

    def __len__(self) -> int:
        return math.ceil(len(self.base) / self.world_size)

    def __iter__(self) -> Iterator[int]:
        indices = [int(i) for i in self.base]
        total = len(self) * self.world_size
        while indices and len(indices) < total:
            indices += indices[: total - len(indices)]
        return iter(indices[self.rank : total : self.world_size])
