"""Randomised parameter sharing's index maps (Desai & Shrivastava 2024, ``../shared/papers.md`` §8): which slot of a
shared array z of m parameters each of n virtual weights reads, W_i = s·G(i)·z[h(i)]. Pure tensor functions; the
compression method that builds layers on them is issue 16's (not wired yet).

- ``random_fold`` (STABLE-RPS): h(i) = (o(⌊i/m⌋) + i mod m) mod m — each length-m partition of the flattened
  weights cyclically shifted by a seeded offset o. Every slot gets ⌊n/m⌋ or ⌈n/m⌉ weights, and at m ≥ n the map
  is injective (1× compression equals dense).
- ``hashed_net``: h(i) = ((a·i + b·i² + c) mod P) mod m with P = 2³¹ − 1 and seeded a, b, c (at m = n about 1/e of
  the slots stay unused).
- ``roast``: 16×16 tiles of a 2-D weight hashed as units to a start slot, the tile's elements read consecutive
  slots from there (mod m).
- ``signs``: the ±1 sign hash G.

Every draw comes from a generator keyed by SHA-256 of (seed, name) (``dynamic.generator``), the same in every process.
"""
from __future__ import annotations

import torch

from sparse_run.config import ConfigError, number

from .dynamic import generator

PRIME = (1 << 31) - 1
MAPPERS = ("random_fold", "hashed_net", "roast")


def _check(n: int, m: int) -> None:
    number(n, "method.sharing: virtual weights n", lo=1, integer=True)
    number(m, "method.sharing: shared slots m", lo=1, integer=True)


def random_fold(n: int, m: int, seed: int, name: str = "fold") -> torch.Tensor:
    """STABLE-RPS's RandomFold: slot of each of ``n`` flattened weights in an array of ``m`` (int64, shape [n])."""
    _check(n, m)
    parts = -(-n // m)
    offsets = torch.randint(0, m, (parts,), generator=generator(seed, name, 0))
    i = torch.arange(n)
    return (offsets[i // m] + i % m) % m


def hashed_net(n: int, m: int, seed: int, name: str = "hash") -> torch.Tensor:
    """HashedNet's universal hash ((a·i + b·i² + c) mod P) mod m, computed without int64 overflow."""
    _check(n, m)
    a, b, c = (int(v) for v in torch.randint(1, PRIME, (3,), generator=generator(seed, name, 0)))
    i = torch.arange(n, dtype=torch.int64)
    sq = (i * i) % PRIME                    # i < 2^31 keeps i² < 2^62
    h = (a * i % PRIME + b * sq % PRIME + c) % PRIME
    return h % m


def roast(shape: tuple[int, int], m: int, seed: int, name: str = "roast", tile: int = 16) -> torch.Tensor:
    """ROAST: slot of each element of a [rows, cols] weight (int64, same shape); each ``tile``×``tile`` tile starts at
    a hashed slot and reads consecutive slots (row-major within the tile) from there, modulo m."""
    rows, cols = (int(d) for d in shape)
    _check(rows * cols, m)
    tiles_r, tiles_c = -(-rows // tile), -(-cols // tile)
    starts = torch.randint(0, m, (tiles_r * tiles_c,), generator=generator(seed, name, 0))
    r = torch.arange(rows).view(-1, 1)
    c = torch.arange(cols).view(1, -1)
    tile_id = (r // tile) * tiles_c + c // tile
    local = (r % tile) * tile + c % tile
    return (starts[tile_id] + local) % m


def signs(n: int, seed: int, name: str = "sign") -> torch.Tensor:
    """G(i) ∈ {−1, +1} for each of ``n`` weights (float32, shape [n])."""
    number(n, "method.sharing: virtual weights n", lo=1, integer=True)
    return torch.randint(0, 2, (n,), generator=generator(seed, name, 0)).float().mul_(2).sub_(1)


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
