"""The process group under torchrun: one small set of helpers that everything else calls.

``torchrun --nproc_per_node N main.py ...`` starts N copies of this program with RANK, WORLD_SIZE,
LOCAL_RANK and the rendezvous address in the environment. :func:`launch_env` checks them (main.py
calls it before anything is read or written); :func:`setup` waits, visibly and for a bounded time,
until every rank has checked in, then joins them into one process group (NCCL on CUDA, gloo on CPU).
Launched without torchrun (no WORLD_SIZE, or WORLD_SIZE=1) no group is created and every helper
answers for a single process: rank 0 of 1, barriers do nothing, sums are the values themselves, so
that path behaves exactly as before.
"""
from __future__ import annotations

import os
import socket
import sys
import threading
import time
from contextlib import contextmanager
from datetime import timedelta
from typing import Callable, NamedTuple

import torch
import torch.distributed as dist

from utils.errors import UserError

TIMEOUT = timedelta(minutes=60)  # a rank waiting while rank 0 builds a teacher cache or validates
RENDEZVOUS_TIMEOUT = 300.0  # seconds for every rank to check in (training.rendezvous_timeout)
NOTICE_EVERY = 15.0  # seconds between two "waiting for ..." lines
ARRIVED = "kd_rendezvous/arrived"  # store key prefix: one key per rank that checked in
LAUNCH = "launch with torchrun --nproc_per_node N main.py ..., or unset WORLD_SIZE for one process"


class LaunchEnv(NamedTuple):
    world_size: int
    rank: int
    local_rank: int
    addr: str
    port: int


def launch_env() -> LaunchEnv | None:
    """The launcher's variables, checked (a one-line UserError names a bad one); None for one process."""
    world = _env_int("WORLD_SIZE", "1", 1, None, "the number of processes")
    if world == 1:
        for var in ("RANK", "LOCAL_RANK"):  # a rank other than 0 of one process: a launcher set up wrongly
            _env_int(var, "0", 0, 0, f"one process (WORLD_SIZE {os.environ.get('WORLD_SIZE', 'unset')}) is rank 0")
        return None
    for var in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(var, "").strip():
            raise UserError(f"WORLD_SIZE is set but {var} is not; {LAUNCH}")
    return LaunchEnv(world, _env_int("RANK", None, 0, world - 1, f"0 <= RANK < WORLD_SIZE={world}"),
                     _env_int("LOCAL_RANK", "0", 0, world - 1, "this process's index on its node"),
                     os.environ["MASTER_ADDR"].strip(), _env_int("MASTER_PORT", None, 1, 65535, "a TCP port"))


def _env_int(var: str, default: str | None, lo: int, hi: int | None, meaning: str) -> int:
    text = os.environ.get(var, default)
    try:
        value = int(text)
    except ValueError:
        raise UserError(f"{var}={text!r} is not an integer ({meaning}); {LAUNCH}") from None
    if value < lo or (hi is not None and value > hi):
        bounds = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise UserError(f"{var}={value} must be {bounds} ({meaning}); {LAUNCH}")
    return value


def launched() -> bool:
    """Whether torchrun (or another launcher setting its variables) started more than one process."""
    return launch_env() is not None


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def is_main() -> bool:
    return rank() == 0


def setup(device: torch.device, rendezvous_timeout: float = RENDEZVOUS_TIMEOUT) -> torch.device:
    """Join the torchrun process group (once); returns this rank's device (``cuda:LOCAL_RANK`` on GPUs)."""
    env = launch_env()
    if env is None:
        return device
    if device.type == "cuda":  # one GPU per process: LOCAL_RANK names it on this node
        if env.local_rank >= torch.cuda.device_count():
            raise UserError(f"LOCAL_RANK {env.local_rank} but this node has {torch.cuda.device_count()} GPUs; start "
                            f"at most that many processes per node (torchrun --nproc_per_node)")
        torch.cuda.set_device(env.local_rank)
        device = torch.device("cuda", env.local_rank)
    if not active():
        store = rendezvous(env, rendezvous_timeout)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=store, rank=env.rank,
                                world_size=env.world_size, timeout=TIMEOUT)
    return device


def rendezvous(env: LaunchEnv, timeout: float) -> dist.Store:
    """Every rank checks in on one TCP store, waiting at most ``timeout`` seconds for the others and
    saying so on stderr; a rank that never comes is named in a one-line error (not a silent
    60-minute hang). Rank 0 serves the store, unless torchrun's agent already does."""
    deadline = time.monotonic() + timeout
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    _check_address(env, serving=env.rank == 0 and not agent)
    store = _bounded(lambda: _serve(env) if env.rank == 0 and not agent else _connect(env, deadline, timeout),
                     env, timeout)
    store.set(f"{ARRIVED}/{env.rank}", "1")
    keys = [f"{ARRIVED}/{r}" for r in range(env.world_size)]
    missing = lambda: [r for r, k in enumerate(keys) if not _check(store, env, [k])]
    if not _poll(lambda: _check(store, env, keys), lambda: f"{_ranks(missing())} of {env.world_size} to join",
                 env, deadline, timeout):
        raise UserError(f"{_ranks(missing())} of {env.world_size} never joined at {env.addr}:{env.port} within "
                        f"{timeout:g} s (training.rendezvous_timeout); start every rank with the same MASTER_ADDR and "
                        f"MASTER_PORT: {LAUNCH}")
    store.set_timeout(TIMEOUT)  # from here on the process group's collectives set the pace
    return store


def _check_address(env: LaunchEnv, serving: bool) -> None:
    """MASTER_ADDR must resolve, and be this machine's when this rank serves the rendezvous (else the
    store's own connection to itself hangs on an unreachable address)."""
    try:
        family, _, _, _, sockaddr = socket.getaddrinfo(env.addr, env.port, type=socket.SOCK_STREAM)[0]
    except OSError as e:
        raise UserError(f"MASTER_ADDR={env.addr} does not resolve ({e.strerror or e}); give rank 0's host name or "
                        f"address, or {LAUNCH}") from None
    if serving:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((sockaddr[0], 0))
            except OSError:
                raise UserError(f"MASTER_ADDR={env.addr} is not an address of this machine, but RANK 0 serves the "
                                f"rendezvous there; start rank 0 on that host, or {LAUNCH}") from None


def _bounded(make, env: LaunchEnv, timeout: float):
    """``make()`` (opening or joining the store), given up after the rendezvous timeout: a peer that
    accepts the connection but never answers would otherwise hold the store's handshake for good."""
    result: list = []

    def run():
        try:
            result.append(("ok", make()))
        except BaseException as e:  # handed to the caller's thread
            result.append(("error", e))
    worker = threading.Thread(target=run, daemon=True)  # left behind if it hangs: the process exits anyway
    worker.start()
    worker.join(timeout + 5.0)
    if not result:
        raise UserError(f"the rendezvous at {env.addr}:{env.port} did not answer within {timeout:g} s "
                        f"(training.rendezvous_timeout): is another program listening on MASTER_PORT? {LAUNCH}")
    kind, value = result[0]
    if kind == "error":
        raise value
    return value


def _serve(env: LaunchEnv) -> dist.Store:
    try:  # wait_for_workers=False: the check-in below waits, visibly and naming who is missing
        return dist.TCPStore(env.addr, env.port, env.world_size, is_master=True, timeout=TIMEOUT,
                             wait_for_workers=False)
    except RuntimeError as e:  # DistNetworkError: most often the port is taken
        raise UserError(f"rank 0 cannot open the rendezvous on MASTER_PORT={env.port} ({_first_line(e)}); "
                        f"choose a free port, or {LAUNCH}") from None


def _connect(env: LaunchEnv, deadline: float, timeout: float) -> dist.Store:
    """A client of rank 0's store, once its port answers: probing with a plain socket first keeps
    the store's own retries (pages of C++ log) out of the wait."""
    reason = ["no answer"]

    def answers() -> bool:
        try:
            socket.create_connection((env.addr, env.port), timeout=2).close()
            return True
        except OSError as e:
            reason[0] = e.strerror or str(e)
            return False
    if not _poll(answers, lambda: "rank 0's rendezvous", env, deadline, timeout):
        raise UserError(f"rank 0's rendezvous at {env.addr}:{env.port} never answered within {timeout:g} s "
                        f"(training.rendezvous_timeout; {reason[0]}); check MASTER_ADDR/MASTER_PORT and {LAUNCH}")
    try:
        return dist.TCPStore(env.addr, env.port, env.world_size, is_master=False,
                             timeout=timedelta(seconds=max(deadline - time.monotonic(), 1.0)))
    except RuntimeError as e:
        raise UserError(f"cannot join rank 0's rendezvous at {env.addr}:{env.port} ({_first_line(e)}); "
                        f"{LAUNCH}") from None


def _check(store: dist.Store, env: LaunchEnv, keys: list[str]) -> bool:
    try:
        return store.check(keys)
    except RuntimeError:  # rank 0 (the server) stopped: it printed why
        raise UserError(f"rank 0's rendezvous at {env.addr}:{env.port} closed before every rank joined (see rank 0's "
                        f"error); {LAUNCH}") from None


def _poll(done: Callable[[], bool], waiting_for: Callable[[], str], env: LaunchEnv, deadline: float,
          timeout: float) -> bool:
    """Poll ``done()`` until true (True) or the deadline (False), printing a line now and then."""
    notice = time.monotonic() + min(5.0, timeout / 3)  # quiet when the ranks start together, as usual
    while not done():
        now = time.monotonic()
        if now >= deadline:
            return False
        if now >= notice:
            mark = f"[rank {env.rank}] " if env.rank else ""
            print(f"{mark}waiting for {waiting_for()} at {env.addr}:{env.port} (timeout {timeout:g} s)",
                  file=sys.stderr, flush=True)
            notice = now + NOTICE_EVERY
        time.sleep(0.2)
    return True


def _ranks(ranks: list[int]) -> str:
    return f"rank{'s' * (len(ranks) != 1)} {', '.join(map(str, ranks))}"


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


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
