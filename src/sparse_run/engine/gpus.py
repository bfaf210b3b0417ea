"""One GPU per job on a multi-GPU machine, without ``CUDA_VISIBLE_DEVICES`` written by hand.

A sweep launched with several jobs at once (``hydra/launcher=gpus``: joblib, one worker per visible GPU) starts
jobs in separate processes that know nothing of each other; each claims the first GPU whose slot lock
(``flock`` on ``<dir>/gpu<i>.lock``, released when the job ends, even if it crashes) no other job holds, and waits
when all are taken. Visible GPUs are those torch sees (``CUDA_VISIBLE_DEVICES`` set by SLURM is respected).
"""
from __future__ import annotations

import fcntl
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator


def slot_dir() -> Path:
    """Per machine and user: jobs of every sweep on this machine share it."""
    return Path(os.environ.get("SPARSE_RUN_GPU_LOCKS") or Path(tempfile.gettempdir()) / f"sparse-run-gpus-{os.getuid()}")


def _try(path: Path) -> IO[str] | None:
    f = open(path, "a")  # noqa: SIM115 - held open for the whole job
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    return f


@contextmanager
def claim(count: int, where: Path | None = None, poll_s: float = 1.0, announce: bool = True) -> Iterator[int]:
    """Hold the first free slot of ``count`` for the block; yields its index (0 when ``count`` <= 1, no lock)."""
    if count <= 1:
        yield 0
        return
    where = where or slot_dir()
    where.mkdir(parents=True, exist_ok=True)
    waited = False
    while True:
        for i in range(count):
            f = _try(where / f"gpu{i}.lock")
            if f is not None:
                try:
                    yield i
                finally:
                    fcntl.flock(f, fcntl.LOCK_UN)
                    f.close()
                return
        if announce and not waited:
            print(f"sparse-run: all {count} GPUs are held by other jobs ({where}); waiting for one", file=sys.stderr)
            waited = True
        time.sleep(poll_s)
