"""Process-group setup under torchrun, and collectives that are no-ops in a single process.

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; without them the run is a single process and every
helper here returns its input. NCCL on GPUs, gloo on CPU (how the tests run two-process DDP).
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from common.config import ConfigError


@dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(preference: str, local_rank: int = 0) -> torch.device:
    """`auto` takes CUDA when present. Each rank owns the GPU of its LOCAL_RANK."""
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():  # a ConfigError: bin/train.py prints one line, as sample's --device does
            raise ConfigError("device=cuda: this torch sees no CUDA device; use device=auto or device=cpu")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init_distributed(preference: str = "auto") -> DistInfo:
    """Join the process group torchrun describes (if any) and pick this rank's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(preference, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
    return DistInfo(rank, local_rank, world_size, device)


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce with op sum | min; returns the tensor for chaining."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op={"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN}[op])
    return tensor


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj` (picklable; small: sampler and RNG states), indexed by rank."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any) -> Any:
    """Rank 0's `obj` on every rank (rank 0 decides, e.g. which checkpoint to resume from)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


# No buffer broadcast each forward (the model's buffers, RoPE tables, are the same on every rank).
# torch 2.13 renamed the option and warns, once per rank, at the old name; the 2.11 of the GPU
# machines knows only the old one. (The new one still syncs buffers once at start: harmless here.)
_NO_BUFFER_SYNC = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(DDP).parameters
                   else {"broadcast_buffers": False})


def wrap_ddp(model: torch.nn.Module, device: torch.device) -> DDP:
    """`model` under DDP on `device`, without per-forward buffer broadcasts."""
    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None, **_NO_BUFFER_SYNC)
