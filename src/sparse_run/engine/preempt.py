"""Preemption: SIGTERM / SIGUSR1 / SIGUSR2 stop a run at the next step boundary with an in-flight checkpoint of that
step, so the requeued job (or the same command run again) continues bit for bit from where the signal arrived.

Why not checkpoint inside the signal handler: a handler runs between two bytecodes, perhaps half-way through an
optimizer step; the loop instead asks ``requested()`` once per step, writes the state it would have written at a
``train.checkpoint_every`` boundary and raises ``Preempted``. The CLI then hands over to submitit's own handler when
the job runs under a submitit launcher (it pickles the job and requeues it: ``checkpoint()`` protocol), or exits
with 128 + the signal number. In a data-parallel run every rank stops at the same step (the flag is all-reduced).
"""
from __future__ import annotations

import signal
import threading
from typing import Any, Callable

import torch

from . import distributed

SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


class Preempted(BaseException):
    """The run stopped on a signal after writing its in-flight checkpoint (a BaseException: no ``except Exception``
    on the way up may swallow it)."""

    def __init__(self, signum: int, where: str):
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name} {where}; the in-flight checkpoint holds that "
                         "step: run the same command again (or let the launcher requeue it) to continue")


_requested: int | None = None
_previous: dict[int, Any] = {}


def _note(signum: int, frame: Any) -> None:
    global _requested
    _requested = signum


def install() -> bool:
    """Catch the preemption signals (main thread only; elsewhere, e.g. a joblib worker thread, nothing changes)."""
    global _requested
    if threading.current_thread() is not threading.main_thread():
        return False
    _requested = None
    for sig in SIGNALS:
        _previous[sig] = signal.signal(sig, _note)
    return True


def uninstall() -> None:
    global _requested
    for sig, handler in _previous.items():
        signal.signal(sig, handler)
    _previous.clear()
    _requested = None


def previous(signum: int) -> Callable[..., Any] | None:
    """The handler that was installed before ``install`` (submitit's, in a submitit job)."""
    handler = _previous.get(signum)
    return handler if callable(handler) else None


DP_EVERY = 10  # data-parallel runs compare the flag every this many steps (a collective and, on CUDA, a host sync)


def requested(step: int) -> int | None:
    """The signal received since ``install``, else None. In a data-parallel run: any rank's, looked at on steps
    that are multiples of ``DP_EVERY`` (the same steps on every rank), so all ranks stop together."""
    if not distributed.current().active:
        return _requested
    if step % DP_EVERY:
        return None
    dev = "cuda" if torch.distributed.get_backend() == "nccl" else "cpu"
    flag = torch.tensor([_requested or 0], device=dev)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return int(flag) or None
