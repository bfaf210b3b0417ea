"""Data-parallel machinery (``engine/distributed.py``): the mask checksum is exact, a desynchronised mask is caught
on every rank with one line — when an arm starts and after the step a hook changed it — and rank 0's decision is
the one every rank trains with. Two real gloo processes on the CPU."""
from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from omegaconf import OmegaConf
from torch import nn

from sparse_run.data import DataBundle
from sparse_run.engine import distributed
from sparse_run.sparsity.masks import MaskSet

DCFG = OmegaConf.create({"world_size": None, "backend": "gloo", "timeout_s": 60})


def _masks(seed: int = 0) -> tuple[nn.Module, MaskSet]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))
    ms = MaskSet({n: p for n, p in model.named_parameters() if n.endswith("weight")})
    gen = torch.Generator().manual_seed(seed)
    ms.set({n: torch.rand(p.shape, generator=gen) < 0.5 for n, p in ms.params.items()})
    return model, ms


def test_checksum_sees_a_kept_weight_that_moved_and_keeps_the_count():
    _, ms = _masks()
    before = distributed.checksum(ms)
    m = ms.masks["0.weight"]
    on, off = m.flatten().nonzero()[0], (~m).flatten().nonzero()[0]
    m.view(-1)[on], m.view(-1)[off] = False, True
    after = distributed.checksum(ms)
    assert before[0, 0] == after[0, 0] and before[0, 1] != after[0, 1]
    assert torch.equal(before[1], after[1])


def test_one_process_is_a_no_op():
    assert not distributed.current().active
    idx = torch.arange(12).view(1, 12)
    assert distributed.shard(idx) is idx and distributed.shard_rows(idx) is idx
    t = torch.tensor([1.5])
    assert distributed.mean(t) is t
    distributed.check_masks(_masks()[1], "here")  # nothing to compare with


@pytest.mark.parametrize("env, want", [({}, (0, 1, 0)), ({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"}, (3, 4, 1))])
def test_context_from_the_launcher_environment(env, want):
    ctx = distributed.from_env(env)
    assert (ctx.rank, ctx.world, ctx.local_rank) == want and ctx.leader == (want[0] == 0)


def _worker(rank: int, port: int, out: str, scenario: str) -> None:
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    distributed.setup(DCFG, torch.device("cpu"), distributed.Context(rank, 2, rank))
    result: dict = {}
    try:
        if scenario == "moved":
            _, ms = _masks()
            distributed.check_masks(ms, "before")  # equal: passes
            if rank == 1:
                m = ms.masks["2.weight"].view(-1)
                on, off = int(m.nonzero()[0]), int((~m).nonzero()[0])
                m[on], m[off] = False, True
            distributed.check_masks(ms, "after the test moved a weight")
        elif scenario == "broadcast":
            _, ms = _masks(seed=rank)  # each rank decided differently ...
            distributed.broadcast_masks(ms)  # ... rank 0's decision wins
            distributed.check_masks(ms, "after broadcast")
            result["ones"] = int(distributed.checksum(ms)[:, 1].sum())
        elif scenario == "hook":
            from sparse_run.engine.train import train

            model, ms = _masks()
            gen = torch.Generator().manual_seed(1)
            x = torch.randn(240, 12, generator=gen)
            y = x[:, :4].argmax(1)
            data = DataBundle(train_x=x, train_y=y, val_x=x[:60], val_y=y[:60], test_x=x[60:120],
                              test_y=y[60:120], spec=None)

            def desync(step: int, model: nn.Module, masks: MaskSet) -> None:
                if step == 3 and rank == 1:  # a rank-local decision
                    masks.masks["0.weight"].view(-1)[0] ^= True

            tcfg = OmegaConf.create({"optimizer": "sgd", "lr": 0.1, "momentum": 0.0, "nesterov": False,
                                     "weight_decay": 0.0, "batch_size": 20, "lr_schedule": "constant",
                                     "warmup_steps": 0, "milestones": [], "gamma": 0.1, "checkpoint_every": 0,
                                     "grad_clip": None, "compile": False, "linear_kernel": "aten",
                                     "chance_check": False})
            train(model, ms, data, tcfg, steps=10, eval_every=5, seed=0, hooks=[desync])
        result["ok"] = True
    except distributed.MasksOutOfSync as e:
        result["error"] = str(e)
    finally:
        distributed.teardown()
    Path(out, f"{rank}.json").write_text(json.dumps(result))


def _spawn(tmp_path: Path, scenario: str) -> list[dict]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_worker, args=(port, str(tmp_path), scenario), nprocs=2, start_method="spawn", join=True)
    return [json.loads((tmp_path / f"{r}.json").read_text()) for r in range(2)]


def test_a_desynchronised_mask_stops_every_rank_with_one_line(tmp_path):
    results = _spawn(tmp_path, "moved")
    for r in results:
        err = r.get("error", "")
        assert err.startswith("masks differ across ranks after the test moved a weight: layer 2.weight"), r
        assert "\n" not in err and "on rank 1" in err


def test_a_hook_that_changes_masks_on_one_rank_is_caught_after_that_step(tmp_path):
    results = _spawn(tmp_path, "hook")
    for r in results:
        assert r.get("error", "").startswith("masks differ across ranks after step 3 of train: layer 0.weight"), r


def test_rank_zeros_decision_is_broadcast(tmp_path):
    results = _spawn(tmp_path, "broadcast")
    assert all(r.get("ok") for r in results)
    assert results[0]["ones"] == results[1]["ones"] == int(distributed.checksum(_masks(seed=0)[1])[:, 1].sum())
