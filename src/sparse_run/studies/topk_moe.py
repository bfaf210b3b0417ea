"""The Top-K sparse softmax gating Gaussian mixture of experts of Nguyen, Akbarian, Yan & Ho (ICLR 2024;
``../shared/papers.md`` §14): its data generator, its maximum-likelihood fit, and the two losses the paper's rates are
about. The simulation that uses them is ``studies/topk_theory.py``.

The model, with scalar x and y:  p(y | x) = Σ_i g_i(x) · N(y | a_i x + b_i, σ_i²),  g = Softmax(TopK(s(x), K)),
s_i(x) = β1_i x + β0_i; TopK keeps the K largest scores and sends the rest to −∞, so only K experts are active for an
x and their weights are a softmax over them alone.

Fitting is maximum likelihood by full-batch Adam over ``restarts`` random starts at once (the best final exact
log-likelihood wins; nothing else is looked at). The top-K selection has no gradient, and with K = 1 the active
weight is the constant 1, so the gating would never learn: the gradient is taken through the dense softmax of the
scores (a straight-through estimator) while the forward pass — the likelihood itself — stays exactly top-K.

Losses (ours where the paper's cannot be computed as written; docs/papers/moe.md):

- **Voronoi loss**: each fitted expert i joins the cell A_j of the nearest true expert in (a, b, log σ); with its
  routing mass π_i = E_x[g_i(x)] (the gating seen through what it does: invariant to the translation of β that
  softmax cannot identify, and to the scale that top-1 gating cannot), D = Σ_j |Σ_{i∈A_j} π_i − π*_j|
  + Σ_j Σ_{i∈A_j} π_i ‖(a, b, log σ)_i − (a, b, log σ)*_j‖.
- **Hellinger distance** of the conditional densities averaged over x ~ U[−1, 1]: h² = E_x[1 − ∫ √(p p*) dy], by
  quadrature on fixed x and y grids (deterministic, so no Monte-Carlo floor hides a rate).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

LOG_2PI = math.log(2 * math.pi)


@dataclass
class Mixture:
    """Parameters of one or several (leading batch dimension R) top-K gating Gaussian MoEs with k experts."""

    beta1: torch.Tensor  # [R, k]
    beta0: torch.Tensor  # [R, k]
    a: torch.Tensor      # [R, k]
    b: torch.Tensor      # [R, k]
    log_sigma: torch.Tensor  # [R, k]
    top_k: int

    @property
    def experts(self) -> int:
        return int(self.a.shape[-1])

    def select(self, r: int) -> "Mixture":
        return Mixture(*(t[r:r + 1] for t in (self.beta1, self.beta0, self.a, self.b, self.log_sigma)), self.top_k)


def truth() -> Mixture:
    """The simulated truth: k* = 2 experts, K = 1 (expert 2 takes x > 0.2), distinct lines and noise levels."""
    def t(v: list[list[float]]) -> torch.Tensor:
        return torch.tensor(v, dtype=torch.float64)

    return Mixture(t([[0.0, 4.0]]), t([[0.0, -0.8]]), t([[-1.5, 2.0]]), t([[0.5, -0.5]]),
                   torch.log(t([[0.3, 0.5]])), top_k=1)


def gates(m: Mixture, x: torch.Tensor, straight_through: bool = False) -> torch.Tensor:
    """g [R, n, k]: softmax over each x's top-K scores, zero elsewhere (``straight_through``: the dense softmax's
    gradient, the exact top-K value)."""
    s = m.beta1[:, None, :] * x[None, :, None] + m.beta0[:, None, :]
    kth = s.topk(m.top_k, dim=-1).values[..., -1:]
    g = torch.softmax(s.masked_fill(s < kth, float("-inf")), dim=-1)
    if not straight_through:
        return g
    dense = torch.softmax(s, dim=-1)
    return dense + (g - dense).detach()


def log_likelihood(m: Mixture, x: torch.Tensor, y: torch.Tensor, straight_through: bool = False) -> torch.Tensor:
    """Σ_n log p(y_n | x_n) per mixture of the batch: [R]."""
    g = gates(m, x, straight_through)
    mu = m.a[:, None, :] * x[None, :, None] + m.b[:, None, :]
    z = (y[None, :, None] - mu) / m.log_sigma.exp()[:, None, :]
    log_n = -0.5 * z ** 2 - m.log_sigma[:, None, :] - 0.5 * LOG_2PI
    return torch.logsumexp(torch.log(g.clamp_min(1e-300)) + log_n, dim=-1).sum(-1)


def sample(m: Mixture, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n pairs from the (single) mixture ``m``: x ~ U[−1, 1], an expert drawn from g(x), y from its Gaussian."""
    x = torch.rand(n, generator=gen, dtype=torch.float64) * 2 - 1
    g = gates(m, x)[0]
    i = torch.multinomial(g, 1, generator=gen).squeeze(1)
    mu = m.a[0, i] * x + m.b[0, i]
    return x, mu + m.log_sigma[0, i].exp() * torch.randn(n, generator=gen, dtype=torch.float64)


# The compact parameter space the theory assumes (without it an over-specified MLE puts an expert on three points
# with σ → 0 or a slope → ∞): σ >= SIGMA_MIN, |a|, |b| <= BOX, |β| <= GATE_BOX.
SIGMA_MIN, BOX, GATE_BOX = 0.05, 10.0, 50.0


def fit(x: torch.Tensor, y: torch.Tensor, experts: int, top_k: int, *, restarts: int, iterations: int,
        gen: torch.Generator) -> tuple[Mixture, float]:
    """The maximum-likelihood fit and its log-likelihood per example: top-1 by an exact profile-likelihood scan of
    the partition (``fit_top1``), top-K ≥ 2 by L-BFGS from ``restarts`` random starts (``fit_lbfgs``)."""
    if top_k == 1:
        return fit_top1(x, y, experts)
    return fit_lbfgs(x, y, experts, top_k, restarts=restarts, iterations=iterations, gen=gen,
                     starts=warm_starts(x, y, experts))


def warm_starts(x: torch.Tensor, y: torch.Tensor, experts: int, sharpness: float = 20.0) -> list[Mixture]:
    """Starts for a top-K >= 2 fit from top-1 fits: the top-1 fit with as many experts, and the one with one expert
    fewer with each expert duplicated in turn, gating lines scaled by ``sharpness`` (a near-hard switch)."""
    out = []
    full, _ = fit_top1(x, y, experts)
    out.append(full)
    if experts > 2:
        small, _ = fit_top1(x, y, experts - 1)
        for i in range(experts - 1):
            idx = torch.tensor([*range(experts - 1), i])
            out.append(Mixture(*(t[:, idx] for t in (small.beta1, small.beta0, small.a, small.b, small.log_sigma)),
                               top_k=1))
    return [Mixture(m.beta1 * sharpness, m.beta0 * sharpness, m.a, m.b, m.log_sigma, top_k=1) for m in out]


def _segment_stats(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Prefix sums [n + 1, 6] of (1, x, y, x², xy, y²) over x sorted, for closed-form regressions of any segment."""
    cols = torch.stack([torch.ones_like(x), x, y, x * x, x * y, y * y], dim=1)
    return torch.cat([torch.zeros(1, 6, dtype=x.dtype), cols.cumsum(0)])


def _segment_fit(stats: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Least squares y ≈ a x + b on sorted points [lo, hi) (broadcast over lo, hi): (loglik, a, b, σ) at the
    Gaussian MLE σ² = SSE / m, floored at SIGMA_MIN; a segment of fewer than 3 points, or whose line leaves the box,
    is invalid (−inf) unless empty."""
    s = stats[hi] - stats[lo]
    m, sx, sy, sxx, sxy, syy = s.unbind(-1)
    det = m * sxx - sx * sx
    ok = det > 1e-12 * m.clamp_min(1) ** 2
    a = torch.where(ok, (m * sxy - sx * sy) / torch.where(ok, det, 1.0), 0.0)
    b = torch.where(m > 0, (sy - a * sx) / m.clamp_min(1), 0.0)
    sse = (syy - 2 * a * sxy - 2 * b * sy + a * a * sxx + 2 * a * b * sx + b * b * m).clamp_min(0)
    var = (sse / m.clamp_min(1)).clamp_min(SIGMA_MIN ** 2)
    ll = -0.5 * m * (LOG_2PI + var.log()) - sse / (2 * var)
    inside = (a.abs() <= BOX) & (b.abs() <= BOX)
    ll = torch.where(m == 0, 0.0, torch.where((m >= 3) & ok & inside, ll, float("-inf")))
    return ll, a, b, var.sqrt()


def fit_top1(x: torch.Tensor, y: torch.Tensor, experts: int, grid: int = 64) -> tuple[Mixture, float]:
    """Top-1 gating of scalar x partitions it into at most ``experts`` intervals, one expert each (the argmax of
    lines; any order is reachable), so the MLE is piecewise linear regression with its change points chosen by
    profile likelihood: exhaustive over every split for 2 experts; for more, the best cut on a grid of ``grid``
    quantiles, then each cut re-optimised over every split in turn until none moves."""
    order = torch.argsort(x)
    xs, ys = x[order], y[order]
    n, stats = x.numel(), _segment_stats(xs, ys)
    cuts = torch.linspace(0, n, grid + 1).round().long().unique()
    every = torch.arange(n + 1)

    def total(bounds: list[torch.Tensor]) -> torch.Tensor:
        return sum(_segment_fit(stats, lo, hi)[0] for lo, hi in zip(bounds[:-1], bounds[1:]))

    inner = experts - 1
    if inner == 1:
        best = [int(every[int(torch.argmax(total([torch.tensor(0), every, torch.tensor(n)])))])]
    else:
        mesh = torch.cartesian_prod(*[cuts] * inner).reshape(-1, inner)
        mesh = mesh[(mesh[:, 1:] >= mesh[:, :-1]).all(1)] if inner > 1 else mesh
        ll = total([torch.zeros(len(mesh), dtype=torch.long), *mesh.T, torch.full((len(mesh),), n)])
        best = mesh[int(torch.argmax(ll))].tolist()
        for _ in range(20):  # coordinate ascent over exact split positions
            moved = False
            for c in range(inner):
                lo = best[c - 1] if c else 0
                hi = best[c + 1] if c + 1 < inner else n
                cand = torch.arange(lo, hi + 1)
                bounds = [torch.tensor(v) for v in [0, *best[:c]]] + [cand] + [torch.tensor(v) for v in [*best[c + 1:], n]]
                pick = int(cand[int(torch.argmax(total(bounds)))])
                moved |= pick != best[c]
                best[c] = pick
            if not moved:
                break
    bounds = [0, *best, n]
    fits = [_segment_fit(stats, torch.tensor(lo), torch.tensor(hi)) for lo, hi in zip(bounds[:-1], bounds[1:])]
    ll = float(sum(f[0] for f in fits))
    # the partition as gating lines: slopes 0, 1, 2, … make expert i the argmax between cut i−1 and cut i
    edges = [-1.0] + [float((xs[c - 1] + xs[c]) / 2) if 0 < c < n else (-1.0 if c == 0 else 1.0) for c in best]
    beta1 = torch.arange(experts, dtype=torch.float64)
    beta0 = -torch.cumsum(torch.tensor([0.0, *edges[1:]], dtype=torch.float64), 0)
    used = [bool(torch.isfinite(f[0])) and hi > lo for f, lo, hi in zip(fits, bounds[:-1], bounds[1:])]
    a = torch.tensor([float(f[1]) if u else 0.0 for f, u in zip(fits, used)], dtype=torch.float64)
    b = torch.tensor([float(f[2]) if u else 0.0 for f, u in zip(fits, used)], dtype=torch.float64)
    sig = torch.tensor([float(f[3]) if u else 1.0 for f, u in zip(fits, used)], dtype=torch.float64)
    return Mixture(beta1[None], beta0[None], a[None], b[None], sig.log()[None], top_k=1), ll / n


def _unbox(m: Mixture) -> list[torch.Tensor]:
    """Raw L-BFGS parameters that map onto ``m`` (inverse of the box reparametrisation, clipped inside it)."""
    def inv(t: torch.Tensor, bound: float) -> torch.Tensor:
        return bound * torch.atanh((t / bound).clamp(-0.999, 0.999))

    ls = m.log_sigma[0].clamp_min(math.log(SIGMA_MIN) + 1e-3)
    return [inv(m.beta1[0], GATE_BOX), inv(m.beta0[0], GATE_BOX), inv(m.a[0], BOX), inv(m.b[0], BOX),
            ls + torch.log(-torch.expm1(math.log(SIGMA_MIN) - ls))]


def fit_lbfgs(x: torch.Tensor, y: torch.Tensor, experts: int, top_k: int, *, restarts: int, iterations: int,
              gen: torch.Generator, starts: list[Mixture] = ()) -> tuple[Mixture, float]:  # type: ignore[assignment]
    """MLE by L-BFGS (strong-Wolfe line search) from each of ``starts`` and ``restarts`` random starts; the best
    exact log-likelihood wins. With K ≥ 2 the active weights depend smoothly on the scores, so gradients are exact
    except where the selected set changes (measure zero)."""
    best: tuple[Mixture, float] | None = None
    log_min = math.log(SIGMA_MIN)
    k = experts
    inits = [_unbox(m) for m in starts] + [
        [torch.randn(k, generator=gen, dtype=torch.float64) * 2, torch.randn(k, generator=gen, dtype=torch.float64),
         torch.randn(k, generator=gen, dtype=torch.float64),
         y.mean() + y.std() * torch.randn(k, generator=gen, dtype=torch.float64),
         torch.full((k,), float(y.std().log()), dtype=torch.float64)] for _ in range(restarts)]
    for raw in inits:
        params = [p.clone().requires_grad_(True) for p in raw]
        opt = torch.optim.LBFGS(params, lr=1, max_iter=iterations, history_size=20, tolerance_grad=1e-9,
                                tolerance_change=1e-12, line_search_fn="strong_wolfe")

        def mixture(ps: list[torch.Tensor]) -> Mixture:  # the box by smooth reparametrisation
            def box(t: torch.Tensor, bound: float) -> torch.Tensor:
                return bound * torch.tanh(t / bound)

            return Mixture(box(ps[0], GATE_BOX)[None], box(ps[1], GATE_BOX)[None], box(ps[2], BOX)[None],
                           box(ps[3], BOX)[None], torch.logaddexp(ps[4], torch.tensor(log_min, dtype=torch.float64))[None],
                           top_k)

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = -log_likelihood(mixture(params), x, y)[0] / x.numel()
            loss.backward()
            return loss

        opt.step(closure)
        with torch.no_grad():
            m = mixture([p.detach() for p in params])
            ll = float(log_likelihood(m, x, y)[0]) / x.numel()
        if math.isfinite(ll) and (best is None or ll > best[1]):
            best = (m, ll)
    assert best is not None, "every restart diverged"
    return best


X_GRID = -1 + (torch.arange(2000, dtype=torch.float64) + 0.5) / 1000  # midpoints: no x sits exactly on a switch


def routing_mass(m: Mixture) -> torch.Tensor:
    """π_i = E_x[g_i(x)] for x ~ U[−1, 1] (midpoint rule on a fixed grid): [k]."""
    return gates(m, X_GRID)[0].mean(0)


def voronoi_loss(fitted: Mixture, true: Mixture) -> float:
    """D(G, G*): routing-mass mismatch per Voronoi cell plus mass-weighted parameter distances (module docstring)."""
    theta = torch.stack([fitted.a[0], fitted.b[0], fitted.log_sigma[0]], dim=1)     # [k, 3]
    theta_star = torch.stack([true.a[0], true.b[0], true.log_sigma[0]], dim=1)      # [k*, 3]
    dist = torch.cdist(theta, theta_star)                                           # [k, k*]
    cell = dist.argmin(dim=1)
    pi, pi_star = routing_mass(fitted), routing_mass(true)
    loss = 0.0
    for j in range(theta_star.shape[0]):
        members = cell == j
        loss += abs(float(pi[members].sum()) - float(pi_star[j])) + float((pi[members] * dist[members, j]).sum())
    return loss


def hellinger(fitted: Mixture, true: Mixture, y_points: int = 2001) -> float:
    """h = √(E_x[1 − ∫ √(p(y|x) p*(y|x)) dy]), x ~ U[−1, 1], by quadrature on fixed x and y grids. The y grid spans
    the true density's support (its means ± 8 σ*): √(p p*) vanishes outside it whatever the fit."""
    x = X_GRID[::4]
    spread = 8 * float(true.log_sigma.exp().max())
    means = true.a[0][:, None] * x[None, :] + true.b[0][:, None]
    y = torch.linspace(float(means.min()) - spread, float(means.max()) + spread, y_points, dtype=torch.float64)

    def density(m: Mixture) -> torch.Tensor:  # [x, y]
        g = gates(m, x)[0]                                                        # [x, k]
        mu = m.a[0] * x[:, None] + m.b[0]                                         # [x, k]
        s = m.log_sigma[0].exp()
        z = (y[None, :, None] - mu[:, None, :]) / s
        return (g[:, None, :] * torch.exp(-0.5 * z ** 2) / (s * math.sqrt(2 * math.pi))).sum(-1)

    bc = torch.trapezoid(torch.sqrt(density(fitted) * density(true)), y, dim=1).clamp(max=1.0)
    return math.sqrt(max(float((1 - bc).mean()), 0.0))
