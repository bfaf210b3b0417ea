"""Data-parallel single runs: one run trained by N processes (``torchrun --nproc-per-node N -m sparse_run ...``).

Why it is built this way (the bugs peers ship): every rank runs the same method code on the same state, so every
decision is taken from the same numbers — parameters are rank 0's (``DistributedDataParallel`` broadcasts them when
an arm starts), gradients are all-reduced before any hook sees them (RigL's growth), data for scores comes from
generators keyed on the seed, never the rank — and rank 0's masks are broadcast after each arm's masks are set.
Each rank then compares an exact checksum of its masks with every other rank's before the arm trains, after every
step on which a hook may change masks and at every evaluation; a mismatch stops the run with one line
(``MasksOutOfSync``). Rank 0 alone writes the run directory; the other ranks work in a private scratch directory
seeded with rank 0's state files, so resume, cached artefacts and methods that read back what they saved behave as in
a one-process run.

Equivalence: with the same global batch (``train.batch_size``, split evenly over the ranks) an N-process run
computes the same mean gradient as one process, summed in another order; models without batch statistics
(BatchNorm, MoE load balancing) therefore match a one-process run to float rounding (docs/scaling.md).
"""
from __future__ import annotations

import datetime
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from sparse_run.config.errors import ConfigError
from sparse_run.sparsity.masks import MaskSet

BACKENDS = ("auto", "gloo", "nccl")
ENV_KEYS = ("WORLD_SIZE", "RANK", "LOCAL_RANK")


class MasksOutOfSync(RuntimeError):
    """Two ranks hold different masks: a pruning decision was not the same everywhere."""


@dataclass(frozen=True)
class Context:
    """This process's place in a data-parallel run (``world == 1``: a plain run)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def leader(self) -> bool:
        return self.rank == 0


_CTX = Context()


def current() -> Context:
    return _CTX


def from_env(env: Any = None) -> Context:
    """The launcher's view (torchrun / SLURM wrappers set ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``)."""
    env = os.environ if env is None else env
    values = {}
    for k in ENV_KEYS:
        raw = env.get(k, "1" if k == "WORLD_SIZE" else "0")
        try:
            values[k] = int(raw)
        except ValueError:
            raise ConfigError(k, f"got {raw!r} from the environment; allowed: a whole number") from None
    world, rank, local = values["WORLD_SIZE"], values["RANK"], values["LOCAL_RANK"]
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ConfigError("RANK", f"got RANK={rank}, WORLD_SIZE={world} from the environment; allowed: "
                                  "0 <= RANK < WORLD_SIZE")
    return Context(rank, world, local)


def check(dcfg: Any, cfg: Any, ctx: Context) -> None:
    """One-line errors before any process group exists: a world size other than the one asked for, a batch that does
    not split evenly, a kind whose decisions are not data-parallel, replicates."""
    expected = dcfg.world_size
    if expected is not None and int(expected) != ctx.world:
        raise ConfigError("dist.world_size", f"got {expected}, but the launcher started {ctx.world} process(es) "
                                             f"(WORLD_SIZE={ctx.world}); allowed: {ctx.world}, or null to take the "
                                             "launcher's")
    if dcfg.backend not in BACKENDS:
        raise ConfigError("dist.backend", f"got {dcfg.backend!r}; allowed: {', '.join(BACKENDS)}")
    if not ctx.active:
        return
    batch = int(cfg.train.batch_size)
    if batch % ctx.world:
        raise ConfigError("train.batch_size", f"got {batch} for {ctx.world} processes; the global batch must split "
                                              f"evenly: allowed: a multiple of {ctx.world}")
    if int(cfg.train.replicates) > 1:
        raise ConfigError("train.replicates", f"got {cfg.train.replicates} in a {ctx.world}-process run; allowed: 1 "
                                              "(data-parallel runs train one seed; sweep seeds with --multirun)")


def setup(dcfg: Any, device: torch.device, ctx: Context | None = None) -> Context:
    """Join the process group of a launcher-started run (a no-op for one process); remembered as ``current()``."""
    global _CTX
    ctx = ctx or from_env()
    if not ctx.active:
        _CTX = ctx
        return ctx
    backend = dcfg.backend
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and device.type != "cuda":
        raise ConfigError("dist.backend", "got nccl with device=cpu; allowed with cpu: gloo, auto")
    if not dist.is_initialized():
        dist.init_process_group(backend, rank=ctx.rank, world_size=ctx.world,
                                timeout=datetime.timedelta(seconds=int(dcfg.timeout_s)))
    _CTX = ctx
    return ctx


def teardown() -> None:
    global _CTX
    if dist.is_initialized():
        dist.destroy_process_group()
    _CTX = Context()


def local_device(device: torch.device, ctx: Context) -> torch.device:
    """One GPU per process on a node: ``cuda:LOCAL_RANK``."""
    if ctx.active and device.type == "cuda":
        torch.cuda.set_device(ctx.local_rank)
        return torch.device("cuda", ctx.local_rank)
    return device


# -- training -------------------------------------------------------------------------------------

def wrap(model: nn.Module) -> nn.Module:
    """``DistributedDataParallel`` around ``model`` (parameters and buffers broadcast from rank 0 now, gradients
    averaged over the ranks in backward). A model with a load-balancing loss may leave experts unused in a batch."""
    from torch.nn.parallel import DistributedDataParallel

    ctx = current()
    ids = [ctx.local_rank] if next(model.parameters()).device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=hasattr(model, "aux_loss"))


def shard(idx: torch.Tensor) -> torch.Tensor:
    """This rank's contiguous slice of each lane's global batch (last dimension)."""
    ctx = current()
    if not ctx.active:
        return idx
    b = idx.shape[-1] // ctx.world
    return idx[..., ctx.rank * b:(ctx.rank + 1) * b]


def shard_rows(x: torch.Tensor) -> torch.Tensor:
    """This rank's slice of a batch already gathered whole, ``[K, B, ...]`` (an augmented batch)."""
    ctx = current()
    if not ctx.active:
        return x
    b = x.shape[1] // ctx.world
    return x[:, ctx.rank * b:(ctx.rank + 1) * b]


def mean(t: torch.Tensor) -> torch.Tensor:
    """The mean of ``t`` over the ranks (each rank's loss is its shard's mean; equal shards make this the global
    mean)."""
    if not current().active:
        return t
    t = t.clone()
    dist.all_reduce(t)
    return t / current().world


_POSITIONS: dict[tuple[int, str], torch.Tensor] = {}


def checksum(masks: MaskSet) -> torch.Tensor:
    """Per layer: kept weights and the sum of their flat positions — exact integers, so any flipped entry shows."""
    rows = []
    for _, _, m in masks:
        flat = m.reshape(-1)
        key = (flat.numel(), str(flat.device))
        pos = _POSITIONS.get(key)
        if pos is None:
            pos = _POSITIONS[key] = torch.arange(flat.numel(), dtype=torch.int64, device=flat.device)
        rows.append(torch.stack([flat.sum(dtype=torch.int64), (pos * flat).sum()]))
    return torch.stack(rows) if rows else torch.zeros(0, 2, dtype=torch.int64)


def check_masks(masks: MaskSet, where: str) -> None:
    """Every rank holds the same masks, or ``MasksOutOfSync`` naming the first layer and ranks that differ."""
    ctx = current()
    if not ctx.active:
        return
    mine = checksum(masks)
    if dist.get_backend() == "nccl":
        mine = mine.cuda()
    every = [torch.empty_like(mine) for _ in range(ctx.world)]
    dist.all_gather(every, mine)
    for r, theirs in enumerate(every):
        if not torch.equal(theirs, every[0]):
            i = int((theirs != every[0]).any(1).nonzero()[0, 0])
            name = masks.names()[i]
            raise MasksOutOfSync(f"masks differ across ranks {where}: layer {name} keeps {int(every[0][i, 0])} weights "
                                 f"on rank 0 and {int(theirs[i, 0])} on rank {r} (position checksums differ); every "
                                 "rank must take the same pruning decision — a rank-seeded draw or rank-local "
                                 "statistics")


def broadcast_masks(masks: MaskSet) -> None:
    """Rank 0's masks, everywhere (the decision is rank 0's; the checksum then proves all ranks agreed)."""
    if not current().active:
        return
    for _, _, m in masks:
        src = m.to(torch.uint8)
        dist.broadcast(src, 0)
        m.copy_(src.bool())
    masks.changed()


# -- the run directory ----------------------------------------------------------------------------

def share_start(run_dir: Path | None, dirs: tuple[str, ...]) -> dict[str, bytes] | None:
    """Rank 0 → every rank: whether there is work (``run_dir`` None on rank 0: the run is complete) and the state
    files under ``dirs`` (checkpoints, saved masks) that a resumed run reads. Returns them on the other ranks."""
    ctx = current()
    if not ctx.active:
        return None
    payload: list[Any] = [None]
    if ctx.leader and run_dir is not None:
        files = {}
        for d in dirs:
            for p in sorted((run_dir / d).rglob("*")) if (run_dir / d).is_dir() else ():
                if p.is_file():
                    files[str(p.relative_to(run_dir))] = p.read_bytes()
        payload = [files]
    dist.broadcast_object_list(payload, 0)
    return None if ctx.leader else payload[0]


def scratch(files: dict[str, bytes]) -> Path:
    """A private working directory for a non-zero rank, holding rank 0's state files."""
    root = Path(tempfile.mkdtemp(prefix=f"sparse-run-rank{current().rank}-"))
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


def drop_scratch(root: Path) -> None:
    shutil.rmtree(root, ignore_errors=True)
