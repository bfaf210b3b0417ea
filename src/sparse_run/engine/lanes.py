"""``train.replicates=K``: one run directory, K seeds, one vectorised training pass per arm.

Any method of ``methods.REGISTRY`` declared ``lockstep`` runs unchanged, once per seed ``seed, seed+1, …, seed+K-1``,
each on its own ``Run`` ("lane") with its own sub-directory for masks and checkpoints. The lanes
take turns in threads that hold one lock (so only one lane's Python runs at a time, and seeded
model builds never interleave); when a lane reaches ``Run.train_arm`` it parks its request and
hands over. Once every live lane is parked, parked arms that match (same arm, same step count,
same starting step) are trained together by ``replicates.train_replicates`` and each lane
resumes with its own ``TrainResult`` — one group at a time, the lanes furthest behind first, so
lanes that got ahead (a cached stage, a resume) wait for the others and fall back into step. Rounds therefore advance in lock-step, each lane pruning its
own trained weights with its own masks, and every row, metrics line and artefact is the one a
single run with that seed writes.

A method adopts replicates by declaring ``lockstep=True`` once a test shows its K-lane results equal K
single runs (``tests/e2e/test_replicates.py``).
"""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from . import replicates as rep
from sparse_run.store.files import atomic_write_bytes

from .results import RunWriter
from .train import TrainResult, train
from sparse_run.config.errors import ConfigError, number

LANES_DIR = "seeds"


def count(cfg: Any) -> int:
    return int(cfg.train.replicates)


def seeds(cfg: Any) -> list[int]:
    return [int(cfg.seed) + i for i in range(count(cfg))]


def check_config(cfg: Any, lockstep: tuple[str, ...]) -> None:
    """Validate ``train.replicates`` and what it can be combined with (before any work); ``lockstep``: the
    schedule kinds that support it."""
    k = cfg.train.replicates
    number(k, "train.replicates", lo=1, integer=True)
    if k == 1:
        return
    kind = cfg.method.schedule.kind
    if OmegaConf.select(cfg, "dataset.layout") == "interactions":
        raise ConfigError("train.replicates", f"got {k} with dataset.layout=interactions; ranking data trains "
                                              "single runs only (use seed=0,1,2 --multirun)")
    if OmegaConf.select(cfg, "model.arch") == "moe":
        raise ConfigError("train.replicates", f"got {k} with model.arch=moe; its load-balancing loss is added by the "
                                              "single-run trainer only (use seed=0,1,2 --multirun)")
    if kind not in lockstep:
        raise ConfigError("train.replicates", f"got {k} with method.schedule.kind={kind}; "
                                              f"replicates > 1 support: {', '.join(lockstep)}")
    rep.check_config(cfg.train)


# -- writers: each lane records its own rows; the run directory shows all lanes, seed by seed -----

class MergedWriter(RunWriter):
    """The run directory's writer: ``summary.csv`` / ``metrics.jsonl`` / ``layers.csv`` are the
    lanes' records concatenated in seed order (``layers.csv`` gains a ``seed`` column)."""

    def __init__(self, run_dir: Path):
        super().__init__(run_dir)
        self.lanes: list[LaneWriter] = []

    def flush(self) -> None:
        self.rows = [r for lane in self.lanes for r in lane.rows]
        self.metrics = [m for lane in self.lanes for m in lane.metrics]
        self.layers = [{**row, "seed": lane.seed} for lane in self.lanes for row in lane.layers]
        super().flush()


class LaneWriter(RunWriter):
    """A lane's writer: artefacts (``.pt``) under the lane directory, tables through the parent
    (a lane writes no CSV of its own, so globbing ``summary.csv`` never counts a row twice)."""

    def __init__(self, lane_dir: Path, seed: int, parent: MergedWriter):
        super().__init__(lane_dir)
        self.seed, self.parent = seed, parent
        parent.lanes.append(self)

    def flush(self) -> None:
        self.parent.flush()


# -- lock-step coordination -----------------------------------------------------------------------

class _Aborted(RuntimeError):
    """Another lane failed; this one stops too."""


@dataclass
class _Request:
    lane: rep.Lane
    data: Any
    tcfg: Any
    steps: int
    eval_every: int

    def group_key(self) -> tuple[Any, ...]:
        start = int(self.lane.resume["step"]) if self.lane.resume else 0
        tcfg = json.dumps(OmegaConf.to_container(self.tcfg, resolve=True) if isinstance(self.tcfg, DictConfig)
                          else dict(self.tcfg), sort_keys=True, default=str)
        return self.lane.desc, self.steps, self.eval_every, start, id(self.data), tcfg


class LockStep:
    """Parks lanes at ``train_arm`` until every live lane is parked, then trains them together."""

    def __init__(self, n: int):
        self.cv = threading.Condition()
        self.live = set(range(n))
        self.pending: dict[int, _Request] = {}
        self.results: dict[int, TrainResult | BaseException] = {}
        self.failed = False
        self.progress: list[Callable[[], int]] = [lambda: 0] * n  # arms a lane has finished

    def trainer(self, i: int) -> Callable[..., TrainResult]:
        """A drop-in for ``train.train`` that lane ``i``'s ``Run`` calls."""

        def lane_train(model: Any, masks: Any, data: Any, tcfg: Any, *, steps: int, eval_every: int, seed: int,
                       desc: str = "train", hooks: Any = None, on_eval: Any = None, checkpoint: Any = None,
                       resume: Any = None, capture: Any = None) -> TrainResult:
            lane = rep.Lane(model, masks, seed, desc, hooks, on_eval, checkpoint, resume, capture)
            return self._submit(i, _Request(lane, data, tcfg, steps, eval_every))

        return lane_train

    def _submit(self, i: int, req: _Request) -> TrainResult:  # caller holds self.cv
        if self.failed:
            raise _Aborted()
        self.pending[i] = req
        self._dispatch()
        while i not in self.results:
            self.cv.wait()
        out = self.results.pop(i)
        if isinstance(out, BaseException):
            raise out
        return out

    def leave(self, i: int, failed: bool) -> None:  # caller holds self.cv
        self.live.discard(i)
        self.failed |= failed
        self._dispatch()

    def _dispatch(self) -> None:
        if not self.pending or (set(self.pending) != self.live and not self.failed):
            return
        if self.failed:
            self.results.update({i: _Aborted() for i in self.pending})
            self.pending = {}
            self.cv.notify_all()
            return
        groups: dict[tuple[Any, ...], list[int]] = {}
        for i, req in sorted(self.pending.items()):
            groups.setdefault(req.group_key(), []).append(i)
        # Train one group: the lanes furthest behind (then the largest group). A lane that got
        # ahead (its dense stage came from the cache, or it resumed further) waits parked until
        # the others catch up, so the lanes fall back into lock-step.
        ids = min(groups.values(), key=lambda g: (min(self.progress[i]() for i in g), -len(g), g[0]))
        reqs = [self.pending.pop(i) for i in ids]
        try:
            out: list[Any] = _train_group(reqs)
        except BaseException as e:  # every lane of the group reports it
            out = [e] * len(ids)
        self.results.update(zip(ids, out))
        self.cv.notify_all()


def _train_group(reqs: list[_Request]) -> list[TrainResult]:
    first = reqs[0]
    if len(reqs) == 1:  # nothing to batch: the plain loop
        lane = first.lane
        return [train(lane.model, lane.masks, first.data, first.tcfg, steps=first.steps, eval_every=first.eval_every,
                      seed=lane.seed, desc=lane.desc, hooks=lane.hooks, on_eval=lane.on_eval,
                      checkpoint=lane.checkpoint, resume=lane.resume, capture=lane.capture)]
    return rep.train_replicates([r.lane for r in reqs], first.data, first.tcfg, steps=first.steps,
                                eval_every=first.eval_every, desc=first.lane.desc)


# -- the adapter ----------------------------------------------------------------------------------

def run_lanes(run: Any, runner: Callable[[Any], None]) -> None:
    """Run ``runner`` on ``run`` — directly if ``train.replicates`` is 1, else as K lock-stepped lanes."""
    k = count(run.cfg)
    if k <= 1:
        runner(run)
        return
    merged = MergedWriter(run.dir)
    run.writer = merged
    step = LockStep(k)
    lanes = []
    for i, seed in enumerate(seeds(run.cfg)):
        cfg = OmegaConf.create(OmegaConf.to_container(run.cfg, resolve=True))
        cfg.seed = seed
        cfg.train.replicates = 1  # each lane is exactly the single run with its seed (cache keys too)
        lane_dir = run.dir / LANES_DIR / str(seed)
        lane = replace(run, cfg=cfg, dir=lane_dir, writer=LaneWriter(lane_dir, seed, merged), done=set(),
                       extra_state={}, train_fn=step.trainer(i))
        if lane.load_progress():
            print(f"sparse-run: resuming seed {seed} ({len(lane.done)} arms already done)")
        lanes.append(lane)
    step.progress = [lambda lane=lane: len(lane.done) for lane in lanes]
    errors: dict[int, BaseException] = {}

    def body(i: int) -> None:
        with step.cv:
            try:
                runner(lanes[i])
            except BaseException as e:  # noqa: BLE001 - re-raised in the calling thread
                errors[i] = e
            finally:
                step.leave(i, failed=i in errors)

    threads = [threading.Thread(target=body, args=(i,), name=f"lane-{i}", daemon=True) for i in range(k)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    real = [errors[i] for i in sorted(errors) if not isinstance(errors[i], _Aborted)]
    if real:
        raise real[0]
    final = lanes[0].dir / "checkpoints/final.pt"
    if final.exists():  # the first seed's final model where single runs keep theirs (hardware, reports)
        atomic_write_bytes(run.dir / "checkpoints/final.pt", final.read_bytes())
    merged.flush()
