"""Multi-process training under torchrun: who this process is, and the few collectives study needs.

`torchrun --nproc-per-node=N -m study run with ...` starts N copies of the ordinary command.
Each finds its rank in the environment torchrun sets; rank 0 alone records the run and prints.
Outside torchrun every function here is a no-op, so the single-process path stays plain.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

# Seconds a rank waits in a collective before giving up (default one hour).
TIMEOUT_VARIABLE = "STUDY_DIST_TIMEOUT"


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def from_environment() -> World:
    """This process's place among torchrun's processes (rank 0 of 1 outside torchrun)."""
    return World(
        rank=int(os.environ.get("RANK", 0)),
        size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


def start(world: World, device: torch.device) -> torch.device:
    """Join the process group (nccl on CUDA, gloo on the CPU); return this rank's device."""
    if not world.distributed:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        # Ranks other than 0 wait in a collective while rank 0 downloads and decodes the data
        # set on first use, which can outlast NCCL's default 10 minutes.
        timeout = datetime.timedelta(seconds=float(os.environ.get(TIMEOUT_VARIABLE, 3600)))
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timeout)
    return device


def stop() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if active():
        dist.barrier()


def sum_(tensor: torch.Tensor) -> torch.Tensor:
    """The element-wise sum over all ranks (in place)."""
    if active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def gather(obj) -> list:
    """Every rank's `obj`, in rank order, on every rank."""
    if not active():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj):
    """Rank 0's `obj` on every rank."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def average_buffers(model: torch.nn.Module) -> None:
    """Make BatchNorm statistics (and other float buffers) the mean over ranks, so every rank
    evaluates with the same model."""
    if not active():
        return
    for buffer in model.buffers():
        if buffer.is_floating_point():
            dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
            buffer /= dist.get_world_size()
