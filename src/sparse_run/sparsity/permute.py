"""Channel permutation before g×1 group selection (SparseByteNN's whole-network permutation).

A g×1 group is g *consecutive* output channels at one input / kernel tap, so which channels sit next to
each other decides how much of Σ|W| whole groups can keep. Reordering a layer's output channels — and,
consistently, every per-channel module after it (BatchNorm, a depthwise conv) and the input channels of
the layer that reads it — leaves the network's function unchanged, so we may choose the order that keeps
the most magnitude at the target density.

The order is found per layer by balanced k-means on the rows' magnitudes: C_out/g clusters of exactly g
rows, so rows whose large entries sit in the same columns share a group. It is kept only if it retains
more Σ|W| than the identity at the target density (the quantity the selection then maximises), so the
permuted arm can never start behind the unpermuted one on that objective.

Models declare where a permutation may go with ``channel_links()`` (a list of ``ChannelLink``); a layer
without a link (the output layer, a layer feeding a residual sum) cannot be permuted — a one-line error.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any
import torch
from torch import nn

from sparse_run.config.errors import ConfigError

from .patterns import check_shapes


@dataclass(frozen=True)
class ChannelLink:
    """``producer``'s output channels may be reordered if ``channelwise`` modules (each acting on one channel
    at a time) and ``consumer``'s input channels follow; the consumer sees each channel as ``spatial``
    consecutive inputs (a Linear reading a flattened conv map)."""

    producer: str
    consumer: str
    channelwise: tuple[str, ...] = ()
    spatial: int = 1


def links_of(model: nn.Module) -> dict[str, ChannelLink]:
    """``{producer weight name: link}`` the model declares (empty when it declares none)."""
    fn = getattr(model, "channel_links", None)
    return {f"{link.producer}.weight": link for link in (fn() if callable(fn) else [])}


def _permute_dim(t: torch.Tensor, dim: int, perm: torch.Tensor, spatial: int = 1) -> torch.Tensor:
    if spatial > 1:  # channel c owns inputs [c·spatial, (c+1)·spatial)
        perm = (perm[:, None] * spatial + torch.arange(spatial, device=perm.device)).flatten()
    return t.index_select(dim, perm.to(t.device))


@torch.no_grad()
def apply(model: nn.Module, link: ChannelLink, perm: torch.Tensor, masks: dict[str, torch.Tensor] | None = None) -> None:
    """Reorder ``link.producer``'s output channels by ``perm`` (new channel i = old ``perm[i]``), and everything
    that reads them, in place; ``masks`` (param name → mask) are reordered with their weights."""
    def put(owner: nn.Module, name: str, full: str, dim: int, spatial: int = 1) -> None:
        t = getattr(owner, name, None)
        if t is None:
            return
        new = _permute_dim(t.data, dim, perm, spatial)
        if isinstance(t, nn.Parameter):
            t.data = new
        else:  # a registered buffer (BatchNorm's running statistics)
            setattr(owner, name, new)
        if masks is not None and full in masks:
            masks[full] = _permute_dim(masks[full], dim, perm, spatial)

    prod = model.get_submodule(link.producer)
    for attr in ("weight", "bias"):
        put(prod, attr, f"{link.producer}.{attr}", 0)
    for path in link.channelwise:
        mod = model.get_submodule(path)
        for attr in ("weight", "bias", "running_mean", "running_var"):
            put(mod, attr, f"{path}.{attr}", 0)
    put(model.get_submodule(link.consumer), "weight", f"{link.consumer}.weight", 1, link.spatial)


def group_sums(w: torch.Tensor, g: int) -> torch.Tensor:
    """Σ|W| of every g×1 group: ``[C_out / g, in·k·k]``."""
    a = w.detach().reshape(w.shape[0], -1).abs().double()
    return a.view(a.shape[0] // g, g, -1).sum(1)


def retained(w: torch.Tensor, g: int, density: float) -> float:
    """Fraction of Σ|W| kept by the best ``round(density × groups)`` g×1 groups of ``w`` (one layer)."""
    s = group_sums(w, g).flatten()
    total = float(s.sum())
    k = round(density * s.numel())
    return float(torch.topk(s, k).values.sum()) / total if k and total > 0 else 0.0


def _balanced_assign(rows: torch.Tensor, centres: torch.Tensor, g: int) -> torch.Tensor:
    """Cluster id per row, each cluster exactly ``g`` rows: greedy by increasing distance (stable ties)."""
    dist = torch.cdist(rows, centres).flatten()
    order = torch.sort(dist, stable=True).indices
    n_rows, n_c = rows.shape[0], centres.shape[0]
    assign = torch.full((n_rows,), -1, dtype=torch.long)
    room = [g] * n_c
    left = n_rows
    for flat in order.tolist():
        r, c = divmod(flat, n_c)
        if assign[r] < 0 and room[c]:
            assign[r] = c
            room[c] -= 1
            left -= 1
            if not left:
                break
    return assign


def group_permutation(w: torch.Tensor, g: int, density: float, *, iters: int = 8,
                      generator: torch.Generator | None = None) -> tuple[torch.Tensor, float, float]:
    """Output-channel order for ``w`` packing large weights into g×1 groups; with the retained Σ|W| fraction
    at ``density`` before (identity) and after. Returns the identity when nothing better is found."""
    rows = w.detach().reshape(w.shape[0], -1).abs().float()
    n = rows.shape[0]
    ident = torch.arange(n)
    base = retained(w, g, density)
    if g == 1 or n == g:
        return ident, base, base
    best, best_val = ident, base
    gen = generator or torch.Generator().manual_seed(0)
    centres = rows[torch.randperm(n, generator=gen)[: n // g]]
    for _ in range(iters):
        assign = _balanced_assign(rows, centres, g)
        perm = torch.sort(assign, stable=True).indices  # rows of cluster 0, then cluster 1, ...
        val = retained(w.detach().reshape(n, -1)[perm], g, density)
        if val > best_val + 1e-12:
            best, best_val = perm, val
        centres = torch.stack([rows[assign == c].mean(0) for c in range(n // g)])
    return best, base, best_val


def check_links(model: nn.Module, names: list[str]) -> dict[str, ChannelLink]:
    """The links of the layers ``names``; a one-line error for the first that cannot be permuted."""
    links = links_of(model)
    for n in names:
        if n not in links:
            why = "it declares no channel links" if not links else "its successor cannot follow a permutation"
            raise ConfigError("method.selection.permute", f"got true; layer {n} of {type(model).__name__} cannot be "
                                                          f"permuted ({why}); allowed: false, or exclude the layer")
    return links


def permute_for_groups(model: nn.Module, names: list[str], g: int, density: float,
                       masks: dict[str, torch.Tensor] | None = None, seed: int = 0) -> dict[str, tuple[float, float]]:
    """Permute every prunable layer in ``names`` (in order) for g×1 groups at ``density``; in place.
    Returns ``{name: (retained before, after)}``. A prunable layer without a channel link is an error."""
    links = check_links(model, names)
    out: dict[str, tuple[float, float]] = {}
    gen = torch.Generator().manual_seed(seed)
    for n in names:
        perm, before, after = group_permutation(model.get_parameter(n), g, density, generator=gen)
        if not torch.equal(perm, torch.arange(perm.numel())):
            apply(model, links[n], perm, masks)
        out[n] = (before, after)
    return out


def check_selection(model: nn.Module, params: dict[str, nn.Parameter], sel: Any) -> None:
    """What a selection needs of the model's shapes: g dividing every prunable layer's output channels (pattern
    ``group``), and a channel link for every prunable layer (``permute``) — checked before any training."""
    check_shapes({n: tuple(p.shape) for n, p in params.items()}, sel)
    if sel is not None and sel.get("permute"):
        check_links(model, list(params))
