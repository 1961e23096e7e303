"""The process group when a command runs under ``torchrun``, else one process.

``torchrun`` (``python -m torch.distributed.run``) sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK`` (plus ``MASTER_ADDR`` / ``MASTER_PORT``) for every process it starts; a plain
run sets none of them and is a world of one. Collectives here move small Python objects
(settings, status), so gloo serves on CPU; with CUDA each process takes the GPU of its
``LOCAL_RANK`` and nccl.

``check_device(name)`` refuses, before anything loads, a device string torch does not know
or a CUDA / MPS device this machine lacks, naming the devices that are valid here.

``collective(fn)`` runs ``fn`` on the chosen ranks and shares the outcome, so an error on
one rank (a bad setting, a full disk) becomes a clear error on every rank instead of the
others waiting at the next barrier until a timeout.
"""
from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from interp.errors import DataError, InterpError, UnknownNameError


@dataclass
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def gather(self, obj: Any) -> list[Any]:
        """``obj`` of every rank, in rank order (``[obj]`` in a world of one)."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, obj)
        return out

    def collective(self, fn: Callable[[], Any], ranks: str = "all") -> Any:
        """Run ``fn`` (on every rank, or only on rank 0 with ``ranks="main"``), then raise
        on every rank if it failed on any; returns ``fn``'s result on the ranks that ran it."""
        result, status = None, None
        if ranks == "all" or self.main:
            try:
                result = fn()
            except Exception as e:  # noqa: BLE001 - shared, then re-raised below
                if not self.distributed:
                    raise
                status = (type(e).__name__, str(e), isinstance(e, InterpError))
                err = e
        statuses = self.gather(status)
        if status is not None:
            raise err
        failed = [(r, s) for r, s in enumerate(statuses) if s is not None]
        if failed:
            r, (kind, msg, _) = failed[0]
            raise DataError(f"rank {r} of {self.size} failed ({kind}): {msg}")
        return result


def world(device: str = "cpu") -> World:
    """This process's place in the torchrun world, joining the process group if needed."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    if size > 1 and not dist.is_initialized():
        if not os.environ.get("MASTER_ADDR"):
            raise DataError(f"WORLD_SIZE={size} but no MASTER_ADDR: start the processes with "
                            f"torchrun (python -m torch.distributed.run)")
        cuda = device.startswith("cuda") and torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if cuda else "gloo")
    return World(rank, size, local)


def _devices_here() -> list[str]:
    here = ["cpu"]
    if torch.cuda.is_available():
        here += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        here.append("mps")
    return here


def check_device(name: str, flag: str = "--device") -> None:
    """Refuse (one line, naming ``flag`` and the devices valid here) a device string torch
    does not parse, a device type other than cpu / cuda / mps, or a CUDA / MPS device (or
    CUDA index) this machine does not have. Call it before loading a model."""
    name = str(name)
    valid = f"valid here: {', '.join(_devices_here())}"
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise UnknownNameError(f"{flag} {name!r} is not a device; {valid}") from None
    if dev.type == "cpu":
        if dev.index not in (None, 0):
            raise DataError(f"{flag} {name}: the CPU has no device index {dev.index}; {valid}")
    elif dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DataError(f"{flag} {name}: CUDA is not available on this machine; {valid}")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise DataError(f"{flag} {name}: this machine has {n} CUDA device(s); {valid}")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise DataError(f"{flag} {name}: MPS is not available on this machine; {valid}")
    else:
        raise DataError(f"{flag} {name}: {dev.type} devices are not supported (cpu, cuda and "
                        f"mps are); {valid}")


def rank_device(device: str, w: World) -> str:
    """``cuda`` becomes this process's GPU (``cuda:LOCAL_RANK``) in a world of several."""
    if w.distributed and device in ("cuda", "cuda:0") and torch.cuda.is_available():
        return f"cuda:{w.local_rank % torch.cuda.device_count()}"
    return device


def host() -> str:
    return socket.gethostname()


@contextlib.contextmanager
def torch_threads(n: int = 1) -> Iterator[None]:
    """Inside: torch on ``n`` threads (restored after). For small jobs (the tiny models'
    forward passes, probes over a few thousand rows, a feature card): a thread pool spends
    their time waking and synchronising threads, measured up to 25x slower on two busy
    cores than on one, and a job on one thread leaves the other core to the browser or
    the rest of the machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
