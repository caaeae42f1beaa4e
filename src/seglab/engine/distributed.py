"""Multi-process training through ``torchrun`` (DistributedDataParallel), and one-process fallbacks.

Launch with torchrun; seglab has no launcher of its own::

    torchrun --nproc-per-node 2 -m seglab train --data hela --model unet
    torchrun --nnodes 2 --node-rank 0 --master-addr HOST --nproc-per-node 4 -m seglab train ...

torchrun sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; :func:`init_distributed` reads them and
joins the process group with NCCL on CUDA devices and gloo on the CPU. Without them every helper
here acts as a single process (rank 0 of 1), so the same code runs both ways.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from seglab.errors import InvalidValueError

__all__ = [
    "DistInfo",
    "all_reduce_sum",
    "barrier",
    "broadcast_object",
    "cleanup_distributed",
    "dist_info",
    "init_distributed",
    "is_main_process",
    "resolve_device",
]


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job.

    Attributes:
        rank: global rank (0 writes files and prints).
        world_size: number of processes.
        local_rank: rank on this node (picks the CUDA device).
        backend: ``"nccl"``, ``"gloo"`` or ``None`` for a single process.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """True on rank 0."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        """True when more than one process takes part."""
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise InvalidValueError(
            f"Environment variable {name} must be an integer (torchrun sets it); got {raw!r}."
        ) from None


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group when launched by torchrun (``WORLD_SIZE > 1``); otherwise do nothing.

    Args:
        device: the run's device setting; ``"cpu"`` forces gloo even where CUDA exists.

    Returns:
        This process's :class:`DistInfo`.

    Raises:
        RuntimeError: ``WORLD_SIZE > 1`` with a CUDA device requested but fewer GPUs than local
            ranks.
    """
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return DistInfo()
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    use_cuda = torch.cuda.is_available() and not str(device).startswith("cpu")
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise InvalidValueError(
                f"Local rank {local_rank} has no GPU ({torch.cuda.device_count()} visible); "
                "launch at most one process per GPU (--nproc-per-node) or pass --device cpu."
            )
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, backend=dist.get_backend())


def dist_info() -> DistInfo:
    """The current process's :class:`DistInfo` (rank 0 of 1 outside a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistInfo()
    return DistInfo(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=_env_int("LOCAL_RANK", 0),
        backend=dist.get_backend(),
    )


def is_main_process() -> bool:
    """True on rank 0 and in single-process runs."""
    return dist_info().is_main


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks in place and return it (unchanged in a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (the object itself in a single process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def cleanup_distributed() -> None:
    """Leave the process group if one is active."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def resolve_device(device: str, info: DistInfo | None = None) -> torch.device:
    """Turn ``"auto"``/``"cpu"``/``"cuda"``/``"cuda:N"`` into a device (the local rank's GPU under DDP).

    Raises:
        ValueError: CUDA asked for but not available, or an unparseable device string.
    """
    info = info or DistInfo()
    text = str(device).strip().lower()
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    if text.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InvalidValueError(
                f"device={device!r} but CUDA is not available here; use device='cpu' or 'auto'."
            )
        if text == "cuda":
            return torch.device(
                "cuda", info.local_rank if info.is_distributed else torch.cuda.current_device()
            )
    try:
        return torch.device(text)
    except RuntimeError:
        raise InvalidValueError(
            f"Cannot parse device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'."
        ) from None
