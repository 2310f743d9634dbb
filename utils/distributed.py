"""The process group under torchrun: one small set of helpers that everything else calls.

``torchrun --nproc_per_node N main.py ...`` starts N copies of this program with RANK, WORLD_SIZE,
LOCAL_RANK and the rendezvous address in the environment. :func:`setup` joins them into one process
group (NCCL on CUDA, gloo on CPU). Launched without torchrun (no WORLD_SIZE, or WORLD_SIZE=1) no
group is created and every helper answers for a single process: rank 0 of 1, barriers do nothing,
sums are the values themselves, so that path behaves exactly as before.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as dist

from utils.errors import UserError

TIMEOUT = timedelta(minutes=60)  # a rank waiting while rank 0 builds a teacher cache or validates


def launched() -> bool:
    """Whether torchrun (or another launcher setting its variables) started more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def is_main() -> bool:
    return rank() == 0


def setup(device: torch.device) -> torch.device:
    """Join the torchrun process group (once); returns this rank's device (``cuda:LOCAL_RANK`` on GPUs)."""
    if not launched():
        return device
    if device.type == "cuda":  # one GPU per process: LOCAL_RANK names it on this node
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise UserError(f"LOCAL_RANK {local} but this node has {torch.cuda.device_count()} GPUs; start at most "
                            f"that many processes per node (torchrun --nproc_per_node)")
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    if not active():
        for var in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
            if var not in os.environ:
                raise UserError(f"WORLD_SIZE is set but {var} is not; launch with torchrun (see the README's "
                                f"torchrun section), or unset WORLD_SIZE for one process")
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)
    return device


def shutdown() -> None:
    if active():
        dist.destroy_process_group()


def barrier() -> None:
    if active():
        dist.barrier()


def sum_all(values: list[float]) -> list[float]:
    """Element-wise sum over ranks (float64; token counts stay exact up to 2**53)."""
    if not active():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def any_rank(flag: bool) -> bool:
    """True on every rank when it is True on any (e.g. a signal that reached one process)."""
    return flag if not active() else sum_all([float(flag)])[0] > 0


def all_gather(obj) -> list:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    if not active():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def shard(items: list, r: int | None = None, n: int | None = None) -> list:
    """Rank ``r``'s contiguous share of ``items``: sizes differ by at most one, in order, and the
    shards of ranks 0..n-1 concatenated give ``items`` back (so gathered results keep their order)."""
    r, n = rank() if r is None else r, world_size() if n is None else n
    k, extra = divmod(len(items), n)
    start = r * k + min(r, extra)
    return items[start:start + k + (r < extra)]


@contextmanager
def main_first():
    """Rank 0 runs the block first (building a cache, decoding pseudo-labels); the others wait, then
    run it and find the result on disk."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()
