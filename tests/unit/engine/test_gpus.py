"""One GPU per job: each job holds the first slot no other job holds, waits when all are held, and frees its slot
when it ends (``engine/gpus.py``; slots only, so it runs without a GPU)."""
from __future__ import annotations

import threading
import time

from sparse_run.engine import gpus


def test_jobs_take_distinct_slots_and_a_freed_slot_is_taken_again(tmp_path):
    with gpus.claim(3, tmp_path) as a, gpus.claim(3, tmp_path) as b:
        assert (a, b) == (0, 1)
        with gpus.claim(3, tmp_path) as c:
            assert c == 2
    with gpus.claim(3, tmp_path) as d:
        assert d == 0


def test_a_job_waits_while_every_slot_is_held(tmp_path, capsys):
    order = []

    def other() -> None:
        with gpus.claim(2, tmp_path, poll_s=0.02) as i:
            order.append(("other", i))

    with gpus.claim(2, tmp_path), gpus.claim(2, tmp_path):
        t = threading.Thread(target=other)
        t.start()
        time.sleep(0.2)
        assert order == []  # still waiting
        order.append(("release", None))
    t.join(5)
    assert order == [("release", None), ("other", 0)]
    assert "all 2 GPUs are held by other jobs" in capsys.readouterr().err


def test_one_gpu_or_none_needs_no_lock(tmp_path):
    with gpus.claim(1, tmp_path) as i:
        assert i == 0
    assert not list(tmp_path.iterdir())
