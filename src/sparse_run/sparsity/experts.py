"""Retraining-free expert reduction for a top-k MoE (DERN, Zhou et al. 2025; ``../shared/papers.md`` §13), as pure
functions on the experts' weights. An expert is a dict of ``gate_w [h, d]``, ``gate_b [h]``, ``up_w [h, d]``,
``up_b [h]``, ``down_w [d, h]``, ``down_b [d]``: neuron j is the *segment* (gate row j, up row j, down column j).

Which experts stay (``keep_by_frequency`` / ``keep_random``) is separate from what becomes of the dropped ones:
- ``drop``: nothing (frequency dropping, random dropping);
- ``average``: each dropped expert is averaged into its most similar kept expert (cosine of the flattened
  weights), weighted by routing frequency (whole-expert averaging);
- ``matched_average``: the same after matching the dropped expert's neurons one-to-one to the kept expert's (Hungarian
  assignment on segment cosine similarity) — averaging across experts is only meaningful once neurons correspond;
- ``dern``: every segment of every dropped expert goes to the kept expert holding its most similar segment; within
  each kept expert, its own segments seed h clusters (k-means on segments, cosine assignment), and each cluster is
  merged by a frequency-weighted average, so the expert keeps its original size h.
Every result has exactly the kept experts, each in its original shapes.
"""
from __future__ import annotations

from typing import Sequence

import torch

from sparse_run.config import ConfigError

Expert = dict[str, torch.Tensor]
REDUCTIONS = ("drop", "average", "matched_average", "dern")


def segments(e: Expert) -> torch.Tensor:
    """[h, 2d + d + 2]: each neuron's gate row, up row, down column and its two biases."""
    return torch.cat([e["gate_w"], e["up_w"], e["down_w"].T, e["gate_b"][:, None], e["up_b"][:, None]], dim=1)


def from_segments(seg: torch.Tensor, d: int, down_b: torch.Tensor) -> Expert:
    return {"gate_w": seg[:, :d], "up_w": seg[:, d:2 * d], "down_w": seg[:, 2 * d:3 * d].T.contiguous(),
            "gate_b": seg[:, 3 * d], "up_b": seg[:, 3 * d + 1], "down_b": down_b}


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def keep_by_frequency(freq: torch.Tensor, n: int) -> list[int]:
    """The ``n`` most routed experts (ties: the lower index), in index order."""
    check_keep(n, freq.numel())
    order = sorted(range(freq.numel()), key=lambda e: (-float(freq[e]), e))
    return sorted(order[:n])


def keep_random(experts: int, n: int, generator: torch.Generator) -> list[int]:
    check_keep(n, experts)
    return sorted(torch.randperm(experts, generator=generator)[:n].tolist())


def check_keep(n: int, experts: int) -> None:
    if not 1 <= int(n) <= experts:
        raise ConfigError("method.experts_kept", f"got {n}; must be in [1, {experts}] (the experts there are)")


def _closest(dropped: Expert, kept: dict[int, Expert]) -> int:
    flat = torch.cat([segments(dropped).flatten(), dropped["down_b"]])
    sims = {k: float(_unit(flat) @ _unit(torch.cat([segments(e).flatten(), e["down_b"]]))) for k, e in kept.items()}
    return max(sims, key=lambda k: (sims[k], -k))


def _match(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """Row order of ``src`` matched one-to-one to ``dst``'s rows, maximising total cosine similarity."""
    from scipy.optimize import linear_sum_assignment

    sim = (_unit(dst) @ _unit(src).T).double().numpy()
    rows, cols = linear_sum_assignment(-sim)
    return src[torch.as_tensor(cols[rows.argsort()])]


def reduce(experts: Sequence[Expert], freq: torch.Tensor, keep: Sequence[int], how: str,
           kmeans_iters: int = 10) -> dict[int, Expert]:
    """The kept experts after ``how`` (``REDUCTIONS``) folded the dropped ones into them; ``freq``: routing share."""
    if how not in REDUCTIONS:
        raise ConfigError("method.reduction", f"got {how!r}; allowed: {', '.join(REDUCTIONS)}")
    keep = sorted(set(int(k) for k in keep))
    check_keep(len(keep), len(experts))
    out = {k: {n: t.clone() for n, t in experts[k].items()} for k in keep}
    dropped = [e for e in range(len(experts)) if e not in keep]
    if how == "drop" or not dropped:
        return out
    d = experts[0]["gate_w"].shape[1]
    w = freq.double().clamp_min(1e-12)
    if how in ("average", "matched_average"):
        groups: dict[int, list[int]] = {k: [k] for k in keep}
        for e in dropped:
            groups[_closest(experts[e], out)].append(e)
        for k, members in groups.items():
            base = segments(experts[k])
            segs = [segments(experts[m]) if how == "average" or m == k else _match(segments(experts[m]), base)
                    for m in members]
            ws = torch.stack([w[m] for m in members])
            merged = sum(wi * s.double() for wi, s in zip(ws, segs)) / ws.sum()
            down_b = sum(wi * experts[m]["down_b"].double() for wi, m in zip(ws, members)) / ws.sum()
            out[k] = from_segments(merged.to(base.dtype), d, down_b.to(base.dtype))
        return out
    return _dern(experts, w, keep, dropped, d, kmeans_iters)


def _dern(experts: Sequence[Expert], w: torch.Tensor, keep: list[int], dropped: list[int], d: int,
          iters: int) -> dict[int, Expert]:
    own = {k: segments(experts[k]).double() for k in keep}
    pool = {k: [(own[k], torch.full((own[k].shape[0],), float(w[k]), dtype=torch.float64))] for k in keep}
    for e in dropped:  # each dropped segment to the kept expert holding its most similar segment
        seg = segments(experts[e]).double()
        best = torch.stack([(_unit(seg) @ _unit(own[k]).T).max(dim=1).values for k in keep])  # [kept, h]
        target = best.argmax(dim=0)
        for i, k in enumerate(keep):
            rows = seg[target == i]
            if len(rows):
                pool[k].append((rows, torch.full((len(rows),), float(w[e]), dtype=torch.float64)))
    out = {}
    for k in keep:
        segs = torch.cat([s for s, _ in pool[k]])
        ws = torch.cat([x for _, x in pool[k]])
        centres = own[k].clone()  # k-means seeded by the expert's own neurons: it keeps h of them
        for _ in range(iters):
            assign = (_unit(segs) @ _unit(centres).T).argmax(dim=1)
            for c in range(centres.shape[0]):
                m = assign == c
                if m.any():
                    centres[c] = (ws[m, None] * segs[m]).sum(0) / ws[m].sum()
        out[k] = from_segments(centres.to(experts[k]["gate_w"].dtype), d, experts[k]["down_b"].clone())
    return out
