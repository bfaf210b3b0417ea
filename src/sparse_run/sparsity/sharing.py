"""Randomised parameter sharing (Desai & Shrivastava 2024, ``../shared/papers.md`` §8): every shareable weight of a
model reads one slot of a single shared array z of m parameters, W_i = s_ℓ·G(i)·z[h(i)].

The index maps, over the global flattening of the shareable weights (layer ℓ holds positions start_ℓ … start_ℓ+n_ℓ):
- ``random_fold`` (STABLE-RPS): h(i) = (o(⌊i/m⌋) + i mod m) mod m — each length-m partition cyclically shifted by a
  seeded offset o. Every slot gets ⌊n/m⌋ or ⌈n/m⌉ weights, and at m ≥ n the map is injective (1× equals dense).
- ``hashed_net``: h(i) = ((a·i + b·i² + c) mod P) mod m, P = 2³¹ − 1, seeded a, b, c (at m = n ≈1/e slots unused).
- ``roast``: 16×16 tiles of each 2-D weight (conv: [out, in·kh·kw]) hashed as units to a start slot; a tile's
  elements read consecutive slots from there (mod m).
- G: a ±1 sign, the parity of a second universal hash of i.

``SharedArray`` computes each W from z in the forward pass from these few seeded constants: no per-weight index or
sign tensor is kept (the index exists only transiently while W is built). Its gradient scaling (STABLE-RPS) divides
∇z_j by 1e-6 + c_j with c_j = Σ_{i: h(i)=j} s_ℓ(i)² — the choice that makes SGD on z at 1× with RandomFold exactly
SGD on W (ΔW_i = s·Δz_j = −lr·s²·∂L/∂W_i / s²), whatever z's init std. Every draw comes from a generator keyed by
SHA-256 of (seed, name) (``dynamic.generator``), the same in every process.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sparse_run.config import ConfigError, number

from .dynamic import generator

PRIME = (1 << 31) - 1
MAPPERS = ("random_fold", "hashed_net", "roast")
TILE = 16
GRAD_SCALE_RULE = "c_j = sum of s^2 over the weights mapped to slot j"


def _check(n: int, m: int) -> None:
    number(n, "method.sharing: virtual weights n", lo=1, integer=True)
    number(m, "method.sharing: shared slots m", lo=1, integer=True)


def _consts(seed: int, name: str) -> tuple[int, int, int]:
    a, b, c = (int(v) for v in torch.randint(1, PRIME, (3,), generator=generator(seed, name, 0)))
    return a, b, c


def _universal(i: torch.Tensor, a: int, b: int, c: int) -> torch.Tensor:
    """((a·i + b·i²) + c) mod P without int64 overflow (i < 2³¹ keeps i² < 2⁶²)."""
    sq = (i * i) % PRIME
    return (a * i % PRIME + b * sq % PRIME + c) % PRIME


def fold_at(i: torch.Tensor, offsets: torch.Tensor, m: int) -> torch.Tensor:
    """RandomFold's slot of global positions ``i`` given the partitions' offsets."""
    return (offsets[i // m] + i % m) % m


def random_fold(n: int, m: int, seed: int, name: str = "fold") -> torch.Tensor:
    """STABLE-RPS's RandomFold: slot of each of ``n`` flattened weights in an array of ``m`` (int64, shape [n])."""
    _check(n, m)
    offsets = torch.randint(0, m, (-(-n // m),), generator=generator(seed, name, 0))
    return fold_at(torch.arange(n), offsets, m)


def hashed_net(n: int, m: int, seed: int, name: str = "hash") -> torch.Tensor:
    """HashedNet's universal hash ((a·i + b·i² + c) mod P) mod m, computed without int64 overflow."""
    _check(n, m)
    return _universal(torch.arange(n, dtype=torch.int64), *_consts(seed, name)) % m


def roast_at(shape: tuple[int, int], starts: torch.Tensor, m: int, tile: int = TILE) -> torch.Tensor:
    """ROAST's slot of each element of a [rows, cols] weight given its tiles' start slots (row-major tiles)."""
    rows, cols = shape
    tiles_c = -(-cols // tile)
    r = torch.arange(rows, device=starts.device).view(-1, 1)
    c = torch.arange(cols, device=starts.device).view(1, -1)
    return (starts[(r // tile) * tiles_c + c // tile] + (r % tile) * tile + c % tile) % m


def tiles(shape: tuple[int, int], tile: int = TILE) -> int:
    return -(-int(shape[0]) // tile) * -(-int(shape[1]) // tile)


def roast(shape: tuple[int, int], m: int, seed: int, name: str = "roast", tile: int = TILE) -> torch.Tensor:
    """ROAST: slot of each element of a [rows, cols] weight (int64, same shape); each ``tile``×``tile`` tile starts at
    a hashed slot and reads consecutive slots (row-major within the tile) from there, modulo m."""
    rows, cols = (int(d) for d in shape)
    _check(rows * cols, m)
    starts = torch.randint(0, m, (tiles((rows, cols), tile),), generator=generator(seed, name, 0))
    return roast_at((rows, cols), starts, m, tile)


def signs(n: int, seed: int, name: str = "sign") -> torch.Tensor:
    """G(i) ∈ {−1, +1} for each of ``n`` weights (float32, shape [n]): the parity of a universal hash."""
    number(n, "method.sharing: virtual weights n", lo=1, integer=True)
    return sign_at(torch.arange(n), _consts(seed, name))


def sign_at(i: torch.Tensor, consts: tuple[int, int, int]) -> torch.Tensor:
    return 1.0 - 2.0 * (_universal(i, *consts) & 1).float()


def slot_load(h: torch.Tensor, m: int) -> torch.Tensor:
    """How many weights read each of the ``m`` slots."""
    return torch.bincount(h.flatten(), minlength=m)


def unused_fraction(h: torch.Tensor, m: int) -> float:
    """Share of slots no weight reads (HashedNet at m = n: ≈ 1/e)."""
    return float((slot_load(h, m) == 0).float().mean())


def mapper(kind: str) -> str:
    """A mapper name, or a one-line error naming the allowed ones."""
    if kind not in MAPPERS:
        raise ConfigError("method.sharing.mapper", f"got {kind!r}; allowed: {', '.join(MAPPERS)}")
    return kind


@dataclass(frozen=True)
class Slice:
    """One shareable weight: its parameter name, shape, first global position, scale s_ℓ and first ROAST tile."""

    name: str
    shape: tuple[int, ...]
    start: int
    scale: float
    tile0: int

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def matrix(self) -> tuple[int, int]:
        return int(self.shape[0]), self.numel // int(self.shape[0])


class SharedArray(nn.Module):
    """z ∈ R^m and the maps that turn it into every shareable weight; ``attach`` makes a model read them.

    ``scales``: per weight name, the std its dense layer would be initialised with; s_ℓ = that std / ``init_std``,
    so W starts with the dense model's spread whatever z's init std (FakeRoast's ``req_scale / init_scale``).
    """

    def __init__(self, shapes: dict[str, tuple[int, ...]], m: int, kind: str, seed: int, init_std: float,
                 scales: dict[str, float], grad_scale: bool, cache: bool = False) -> None:
        super().__init__()
        mapper(kind)
        number(init_std, "method.sharing.init_std", lo=0, lo_open=True)
        n = sum(int(torch.Size(s).numel()) for s in shapes.values())
        _check(n, m)
        if m > n:
            raise ConfigError("method.schedule.compressions", f"m = {m} shared slots for n = {n} shareable weights; "
                                                              "slots beyond n are never read (allowed: m <= n, "
                                                              "compression >= 1)")
        self.kind, self.m, self.n, self.grad_scale_on = kind, int(m), n, bool(grad_scale)
        self.z = nn.Parameter(torch.randn(m, generator=generator(seed, "z", 0)) * float(init_std))
        self.slices: list[Slice] = []
        start = tile0 = 0
        for name, shape in shapes.items():
            s = Slice(name, tuple(int(d) for d in shape), start, float(scales[name]) / float(init_std), tile0)
            self.slices.append(s)
            start, tile0 = start + s.numel, tile0 + tiles(s.matrix)
        self.sign_consts = _consts(seed, "sign")
        self.hash_consts = _consts(seed, "hash")
        # the few seeded constants the maps need (persistent: a checkpoint rebuilds the same W)
        self.register_buffer("offsets", torch.randint(0, m, (-(-n // m),), generator=generator(seed, "fold", 0)))
        self.register_buffer("starts", torch.randint(0, m, (max(tile0, 1),), generator=generator(seed, "roast", 0)))
        self.cache = False
        self.register_buffer("slot_scale", self._slot_scale(), persistent=False)
        self.cache = bool(cache)
        if self.cache:  # int32 index + int8 sign per weight (5 bytes; the reference keeps int64 + fp32, 12)
            for k, s in enumerate(self.slices):
                self.register_buffer(f"idx{k}", self._index(s).to(torch.int32), persistent=False)
                self.register_buffer(f"sgn{k}", self._sign(s).to(torch.int8), persistent=False)
        if self.grad_scale_on:
            self.z.register_hook(lambda g: g / (1e-6 + self.slot_scale))

    # -- the maps -------------------------------------------------------------------------------
    def index(self, s: Slice) -> torch.Tensor:
        """h over one weight, in its shape (computed unless cached)."""
        if self.cache:
            return getattr(self, f"idx{self.slices.index(s)}").long()
        return self._index(s)

    def sign(self, s: Slice) -> torch.Tensor:
        if self.cache:
            return getattr(self, f"sgn{self.slices.index(s)}").float()
        return self._sign(s)

    def _index(self, s: Slice) -> torch.Tensor:
        dev = self.offsets.device
        if self.kind == "roast":
            return roast_at(s.matrix, self.starts[s.tile0:s.tile0 + tiles(s.matrix)], self.m).view(s.shape)
        i = torch.arange(s.start, s.start + s.numel, device=dev)
        h = fold_at(i, self.offsets, self.m) if self.kind == "random_fold" else _universal(i, *self.hash_consts) % self.m
        return h.view(s.shape)

    def _sign(self, s: Slice) -> torch.Tensor:
        i = torch.arange(s.start, s.start + s.numel, device=self.offsets.device)
        return sign_at(i, self.sign_consts).view(s.shape)

    def weight(self, s: Slice) -> torch.Tensor:
        """W = s_ℓ · G · z[h] (differentiable in z; index_select's backward is an index_add, ~4x faster on CPU than
        advanced indexing's)."""
        if self.cache:
            k = self.slices.index(s)
            idx, sgn = getattr(self, f"idx{k}"), getattr(self, f"sgn{k}")
            return (self.z.index_select(0, idx.flatten()).view(s.shape) * sgn).mul_(s.scale)
        return (self.z.index_select(0, self._index(s).flatten()).view(s.shape) * self._sign(s)).mul_(s.scale)

    def _slot_scale(self) -> torch.Tensor:
        c = torch.zeros(self.m)
        for s in self.slices:
            c.index_add_(0, self.index(s).flatten(), torch.full((s.numel,), s.scale ** 2))
        return c

    def load(self) -> torch.Tensor:
        """Weights per slot over every shareable weight."""
        return slot_load(torch.cat([self.index(s).flatten() for s in self.slices]), self.m)

    # -- wiring into a model ----------------------------------------------------------------------
    def attach(self, model: nn.Module) -> None:
        """Replace each shareable ``<module>.weight`` parameter by W computed from z before every forward pass;
        z becomes the model's parameter ``shared.z``."""
        model.add_module("shared", self)
        for s in self.slices:
            owner = model.get_submodule(s.name.rpartition(".")[0])
            if not isinstance(owner, (nn.Linear, nn.Conv1d, nn.Conv2d)) or s.name.rpartition(".")[2] != "weight":
                raise ConfigError("method.policy.layers", f"{s.name} is no Linear / Conv weight; parameter sharing "
                                                          "shares linear | conv weights only")
            del owner._parameters["weight"]
            owner.weight = self.weight(s).detach()  # a plain attribute (shape queries between passes)
            owner.register_forward_pre_hook(lambda mod, _args, s=s: setattr(mod, "weight", self.weight(s)))

    def counts(self) -> dict[str, int]:
        """Parameter and buffer accounting: the shared array, persistent constants, transient bytes per forward."""
        held = sum(b.numel() * b.element_size() for b in self.buffers())
        return {"shared_params": self.m, "shareable": self.n, "buffer_bytes": held,
                # while W is built: W itself (fp32), plus the transient int64 index and fp32 sign unless cached
                "forward_weight_bytes": self.n * (4 if self.cache else 4 + 8 + 4)}
