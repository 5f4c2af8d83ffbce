"""Multi-process training with torch.distributed, as launched by `torchrun`.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK (and the rendezvous address); without them the run
is a single process and every helper here is a no-op. Backend: NCCL when training on CUDA (one
GPU per process, `cuda:LOCAL_RANK`), gloo on CPU.

Sharding (why every rank makes the same number of steps): every rank computes the same global
batches (the token sampler is a pure function of the data, the seed and the epoch) and takes a
disjoint round-robin share of each one. Step counts are therefore equal on every rank (uneven
counts would hang DDP's all-reduce), `data.batch_tokens` is the global batch whatever the number
of processes, and resume positions mean the same thing for any world size. A rank whose share is
empty (a batch with fewer sentences than processes) runs the batch's first sentence with weight
0: it contributes no gradient but still takes part in the all-reduce.

Loss scaling: each rank backpropagates `loss_sum * world_size * weight / global_target_tokens`;
DDP averages gradients over ranks, so the update equals the single-process update of the
global batch (up to float summation order).
"""
from __future__ import annotations

import contextlib

import datetime
import os
import time
from dataclasses import dataclass
from typing import Any, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.distributed as dist

from nmt.errors import UserError

ENVIRONMENT = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
TIMEOUT = datetime.timedelta(minutes=60)  # validation or a slow checkpoint write must not trip it
SHUTDOWN_PAUSE_SECONDS = 0.2


@dataclass(frozen=True)
class Distributed:
    """Where this process stands: rank among world_size, and its GPU index on this machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Only the main process writes checkpoints, logs and TensorBoard."""
        return self.rank == 0


SINGLE_PROCESS = Distributed()


def from_environment(environ: Mapping[str, str] = os.environ) -> Distributed:
    """The torchrun variables, checked; a single process when WORLD_SIZE is unset."""
    if "WORLD_SIZE" not in environ:
        return SINGLE_PROCESS
    values = {}
    for name in ENVIRONMENT:
        raw = environ.get(name, "0" if name == "LOCAL_RANK" else None)
        try:
            values[name] = int(raw)
        except (TypeError, ValueError):
            raise UserError(f"environment variable {name}={raw!r} is not an integer "
                            f"(launch distributed training with torchrun)") from None
    world, rank = values["WORLD_SIZE"], values["RANK"]
    if world < 1 or not 0 <= rank < world or values["LOCAL_RANK"] < 0:
        raise UserError(f"environment: RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK="
                        f"{values['LOCAL_RANK']} are inconsistent (need 0 <= RANK < WORLD_SIZE)")
    return Distributed(rank=rank, world_size=world, local_rank=values["LOCAL_RANK"])


def initialize(device: torch.device, environ: Mapping[str, str] = os.environ
               ) -> Tuple[Distributed, torch.device]:
    """Joins the process group (NCCL on CUDA, gloo on CPU).

    Returns (placement, this rank's device: cuda:LOCAL_RANK when training on CUDA)."""
    placement = from_environment(environ)
    if not placement.enabled:
        return placement, device
    if device.type == "cuda":
        if placement.local_rank >= torch.cuda.device_count():
            raise UserError(f"LOCAL_RANK={placement.local_rank} but only "
                            f"{torch.cuda.device_count()} CUDA device(s) are visible")
        device = torch.device("cuda", placement.local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, rank=placement.rank, world_size=placement.world_size,
                                timeout=TIMEOUT)
    return placement, device


def shutdown() -> None:
    """Leaves the process group; call it last, after the final barrier.

    Why the pause: once DDP has used it, torch keeps the gloo group (and its worker threads)
    alive after destroy_process_group. A worker that frees the last collective's tensors needs
    the GIL; if Python is already finalizing by then, the thread is torn down inside C++ and the
    process aborts ("terminate called without an active exception", about 1 exit in 40 here).
    Sleeping releases the GIL so the workers finish while Python still runs."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
        time.sleep(SHUTDOWN_PAUSE_SECONDS)


# --- sharding ------------------------------------------------------------------------------------

def shard_of(indices: Sequence[int], placement: Distributed) -> Tuple[List[int], float]:
    """(this rank's share of a global batch, its weight): round-robin, so shares have similar
    lengths; an empty share becomes the first sentence with weight 0."""
    share = list(indices[placement.rank::placement.world_size])
    if share:
        return share, 1.0
    return [indices[0]], 0.0


@dataclass
class Shard:
    """One rank's part of a global batch. weight is 1.0, or 0.0 for a stand-in (no gradient)."""

    batch: Any
    weight: float = 1.0

    def to(self, device) -> "Shard":
        return Shard(self.batch.to(device), self.weight)


def as_shard(item) -> Shard:
    """Trainer input: a Shard as is, a plain Batch as a full-weight shard of itself."""
    return item if isinstance(item, Shard) else Shard(item, 1.0)


# --- collectives (no-ops in a single process) ----------------------------------------------------

def all_reduce_sums(values: Sequence[float], placement: Distributed,
                    device: torch.device) -> List[float]:
    """Element-wise sums over ranks, in float64."""
    if not placement.enabled:
        return [float(value) for value in values]
    tensor = torch.tensor([float(value) for value in values], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def broadcast_object(value, placement: Distributed, *, source: int = 0):
    """`value` of rank `source` on every rank (picklable values only: plain data, never code
    from a file)."""
    if not placement.enabled:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=source)
    return holder[0]


def gather_objects(value, placement: Distributed) -> list:
    """[value of rank 0, value of rank 1, ...] on every rank."""
    if not placement.enabled:
        return [value]
    gathered: List[Optional[Any]] = [None] * placement.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def barrier(placement: Distributed) -> None:
    if placement.enabled:
        dist.barrier()


def wrap_model(model: torch.nn.Module, placement: Distributed, device: torch.device):
    """DistributedDataParallel around `model` (its forward must be the training loss), or the
    model itself in a single process. DDP broadcasts rank 0's parameters on construction."""
    if not placement.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def gradient_sync(train_model: torch.nn.Module, placement: Distributed, *, enabled: bool):
    """Context for one backward: DDP's gradient all-reduce on (`enabled`) or deferred (`no_sync`:
    the gradients of accumulated batches stay local until the group's last backward)."""
    if placement.enabled and not enabled:
        return train_model.no_sync()
    return contextlib.nullcontext()


class SilentStats:
    """The TrainingStats interface for ranks other than 0: they log and write nothing."""

    def restart_clock(self) -> None:
        pass

    def train_step(self, *args, **kwargs) -> None:
        pass

    def flush_window(self, *args, **kwargs) -> None:
        pass

    def validation(self, step: int, *, epoch: int, scores: dict) -> dict:
        return dict(scores, event="valid", step=step, epoch=epoch)

    def summary(self, **fields) -> dict:
        return {"event": "summary", **fields}

    def message(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass
