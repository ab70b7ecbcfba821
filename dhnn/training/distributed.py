"""Data-parallel training under ``torchrun``: the process group, the model wrapper and the sharded loader.

Every process that ``torchrun`` starts runs the same training (``dhnn.pipeline.ddp_train``), reads
its place from the environment torchrun sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``) and joins one process group: NCCL on CUDA, gloo on CPU. The model
is wrapped in ``DistributedDataParallel`` (gradients are averaged across processes after every
step), and each process reads its own share of every global batch through a
``DistributedSampler``. Rank 0 alone evaluates, writes checkpoints, dvclive files and progress lines.

Without torchrun (``WORLD_SIZE`` unset or 1) :func:`setup` starts no process group and every helper
here is the identity, so the same code runs as one plain process.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as td
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

# how long a process waits for the others at a collective: rank 0 evaluates the validation set
# while the other ranks wait for its metrics, and that takes minutes on large validation sets
TIMEOUT = timedelta(minutes=60)


@dataclass(frozen=True)
class Dist:
    """This process's place in the job: its global rank, the number of processes, its rank on its machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that evaluates and writes."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """More than one process (a process group is running)."""
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    try:
        return default if value in (None, "") else int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer (torchrun sets it)") from None


def device_for(name: str, local_rank: int, world_size: int) -> torch.device:
    """The device of the process with ``local_rank``: its own GPU under CUDA, else the CPU.

    ``name`` is ``train.device``. With several processes, ``auto`` and ``cuda[:N]`` mean GPU
    ``local_rank`` (one GPU per process); with one process ``cuda:N`` keeps N.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"train.device is {name!r} but CUDA is not available to this process")
        if world_size == 1 and ":" in name:
            return torch.device(name)
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise RuntimeError(f"local rank {local_rank} has no GPU: this machine has {count}; start at most "
                               f"{count} processes per machine (train.nproc, or torchrun --nproc_per_node)")
        return torch.device("cuda", local_rank)
    if name == "mps" and world_size > 1:
        raise RuntimeError("train.device mps: distributed training needs CUDA (NCCL) or the CPU (gloo)")
    return torch.device(name)


def setup(device: str = "auto") -> Dist:
    """Read torchrun's environment and, with more than one process, join the process group.

    ``device`` is ``train.device``; the backend follows from the device: NCCL for CUDA, gloo for
    the CPU. Without torchrun this returns a one-process :class:`Dist` and starts nothing.
    """
    rank, world, local = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0)
    dev = device_for(device, local, world)
    if world > 1 and not td.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        backend = "nccl" if dev.type == "cuda" else "gloo"
        td.init_process_group(backend, rank=rank, world_size=world, timeout=TIMEOUT,
                              device_id=dev if dev.type == "cuda" else None)
    return Dist(rank, world, local, dev)


def cleanup() -> None:
    """Leave the process group (a no-op without one)."""
    if td.is_available() and td.is_initialized():
        td.destroy_process_group()


def wrap(model: nn.Module, dist: Dist | None, find_unused_parameters: bool = False) -> nn.Module:
    """``model`` in ``DistributedDataParallel`` when there are several processes, else ``model`` itself.

    The wrapper only runs the forward pass and averages gradients; the caller keeps using ``model``
    for everything else (its loss, its backbone, evaluation, ``state_dict``). ``find_unused_parameters``
    is for phases that freeze part of the model (the alternating schedule freezes the CNN).
    """
    if dist is None or not dist.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [dist.device.index] if dist.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, output_device=ids[0] if ids else None,
                                   find_unused_parameters=find_unused_parameters)


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s random streams (augmentation, dropout) in a run seeded by ``seed``."""
    return (seed * 65536 + rank) % 2**32


def _as_batch(batch):
    return batch  # a dataset with __getitems__ returns a collated batch itself (see dhnn.data.base.make_loader)


def distributed_loader(dataset: Dataset, global_batch: int, seed: int, dist: Dist, num_workers: int = 0) -> DataLoader:
    """This process's share of every shuffled global batch of ``global_batch`` samples.

    A ``DistributedSampler`` (shuffle by ``seed`` and the epoch, see ``set_epoch``) gives rank r the
    samples r, r + W, r + 2W ... of each epoch's permutation, so the W shares of batch k together are
    the samples of batch k of one process reading the same permutation. The last batch is padded by
    repeating samples so that every process takes the same number of steps.
    """
    if global_batch % dist.world_size:
        raise ValueError(f"train.batch_size {global_batch} is not divisible by the {dist.world_size} processes "
                         f"(each process takes an equal share of every batch)")
    sampler = DistributedSampler(dataset, num_replicas=dist.world_size, rank=dist.rank, shuffle=True, seed=seed,
                                 drop_last=False)
    collate = _as_batch if hasattr(dataset, "__getitems__") else None
    # the generator only seeds the loader's workers (their augmentation): one stream per rank
    generator = torch.Generator().manual_seed(rank_seed(seed, dist.rank))
    return DataLoader(dataset, batch_size=global_batch // dist.world_size, sampler=sampler, num_workers=num_workers,
                      generator=generator, collate_fn=collate, drop_last=False)


def all_reduce_mean(value: float, dist: Dist | None) -> float:
    """The mean of ``value`` over all processes (``value`` itself with one process)."""
    if dist is None or not dist.distributed:
        return value
    t = torch.tensor([float(value)], dtype=torch.float64, device=dist.device)
    td.all_reduce(t, op=td.ReduceOp.SUM)
    return t.item() / dist.world_size


def _pack(obj: Any) -> bytes:
    # torch.save, not the collectives' own pickling: it carries tensors (random-number states,
    # weights) reliably, and the receiver loads with weights_only like any dhnn checkpoint
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _unpack(data: bytes) -> Any:
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def broadcast_object(obj: Any, dist: Dist | None, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` (tensors and plain data) on every process; tensors arrive on the CPU."""
    if dist is None or not dist.distributed:
        return obj
    box = [_pack(obj) if dist.rank == src else None]
    td.broadcast_object_list(box, src=src)
    return obj if dist.rank == src else _unpack(box[0])


def gather_objects(obj: Any, dist: Dist | None) -> list:
    """Every process's ``obj`` (tensors and plain data), in rank order, on every process."""
    if dist is None or not dist.distributed:
        return [obj]
    out: list = [None] * dist.world_size
    td.all_gather_object(out, _pack(obj))
    return [obj if r == dist.rank else _unpack(b) for r, b in enumerate(out)]


def barrier(dist: Dist | None) -> None:
    """Wait until every process gets here."""
    if dist is not None and dist.distributed:
        td.barrier()
