"""A small DARTS search space with a sparse op, for the DASS study (``../shared/papers.md`` §9).

DASS searches the DARTS cell with a HYDRA-style ``SparseConv`` among the candidates and optimises the
architecture weights α on the loss of the *sparsified* supernet, so that the chosen cell is one that still works
once pruned. This module holds the pieces that study needs and nothing else:

- ``topk_mask`` / ``SparseConv2d``: a conv whose weight is masked by the top-(1−p) |scores|, with straight-through
  gradients to |scores| (the mask acts as the identity in backward, so d mask / d s = sign(s));
- ``Supernet``: stem → 1 or 2 stride-1 normal cells sharing one α tensor → global pooling → linear. Its
  ``sparsified()`` mode masks every parametric op at ratio p (``conv3`` / ``sepconv3`` by |weight|,
  ``sparseconv3`` always by its learned scores) so the α step can see the pruned supernet while the weight step
  stays dense;
- ``derive`` → ``Genotype`` → ``DerivedNet``: DARTS's discrete cell (top op per edge, top-2 edges per node) as a
  plain network of ``nn.Conv2d`` / ``nn.Linear`` whose ``weight`` Parameters an external mask can prune;
- ``HandCNN``: the hand-designed baseline, sized to match a derived net (``hand_cnn_like``).

The stem is DARTS's — a 3×3 conv to ``3·C`` channels + BN (``STEM_MULT``) — at stride 2 (our CPU scale). Only ops inside cells are ever masked;
the stem, the 1×1 preprocessing convs and the classifier stay dense in the supernet.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparse_run.config.errors import ConfigError
from sparse_run.sparsity.topk import keep_top

OPS = ("skip", "conv3", "sepconv3", "maxpool", "sparseconv3")
OPS_FIELD = "method.schedule.ops"
STEM_MULT = 3  # DARTS's stem width: 3·C channels


# -- checks --------------------------------------------------------------------------------------------------------


def check_ops(ops: Iterable[str], field: str = OPS_FIELD) -> tuple[str, ...]:
    """The candidate op names as a tuple; an unknown, repeated or empty list is a one-line ``ConfigError``."""
    ops = tuple(ops)
    for name in ops:
        if name not in OPS:
            raise ConfigError(field, f"got {name!r}; allowed: {', '.join(OPS)}")
    if not ops or len(set(ops)) != len(ops):
        raise ConfigError(field, f"got {list(ops)}; need distinct names from: {', '.join(OPS)}")
    return ops


def check_ratio(ratio: float) -> float:
    """p is the fraction pruned: p = 1 would keep nothing, so only [0, 1) is meaningful."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio < 1:
        raise ValueError(f"sparsity ratio p must be in [0, 1); got {ratio!r}")
    return float(ratio)


def _check_cells(cells: int, C: int, nodes: int = 2) -> None:
    if cells not in (1, 2) or isinstance(cells, bool):
        raise ConfigError("method.schedule.cells", f"got {cells!r}; allowed: 1, 2")
    if not isinstance(C, int) or C < 1:
        raise ConfigError("method.schedule.C", f"got {C!r}; must be an integer >= 1")
    if not isinstance(nodes, int) or nodes < 2:
        raise ConfigError("method.schedule.nodes", f"got {nodes!r}; must be an integer >= 2")


def num_edges(nodes: int) -> int:
    """Edges of one cell: node i takes every earlier state (2 inputs + i nodes)."""
    return sum(2 + i for i in range(nodes))


def param_count(model: nn.Module) -> int:
    """Number of parameters (for sizing baselines against each other)."""
    return sum(p.numel() for p in model.parameters())


# -- top-k masks with straight-through gradients ------------------------------------------------------------------


def _kept(numel: int, ratio: float) -> int:
    return numel - round(ratio * numel)


class TopKSTE(torch.autograd.Function):
    """Forward: 0/1 mask of the ``numel − round(p·numel)`` highest magnitudes (ties: earliest).
    Backward: the identity, so scores of pruned weights still learn (HYDRA)."""

    @staticmethod
    def forward(ctx, magnitudes: Tensor, ratio: float) -> Tensor:
        return keep_top(magnitudes.detach(), _kept(magnitudes.numel(), ratio)).to(magnitudes.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return grad, None


def topk_mask(scores: Tensor, ratio: float) -> Tensor:
    """Float 0/1 mask (shape of ``scores``) pruning the fraction ``ratio`` of lowest |scores|.

    The straight-through step is applied to |scores|, as in HYDRA, so d mask / d s = sign(s): the identity for the
    positive scores of the init; a score pushed below zero is then pulled back toward zero rather than growing in
    magnitude, which would put its weight back into the mask.
    """
    return TopKSTE.apply(scores.abs(), check_ratio(ratio))


class MaskableConv2d(nn.Conv2d):
    """A plain conv that, while ``ratio`` is set, runs with its weight masked by top-k |weight|.

    The mask is a constant (no gradient through it), so kept weights still get their ordinary gradient.
    """

    ratio: float | None = None

    def effective_weight(self) -> Tensor:
        """The weight the forward uses: dense, or magnitude-masked at ``ratio``."""
        if self.ratio is None:
            return self.weight
        keep = keep_top(self.weight.detach().abs(), _kept(self.weight.numel(), self.ratio))
        return self.weight * keep.to(self.weight.dtype)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.effective_weight(), self.bias, self.stride, self.padding, self.dilation, self.groups)


class SparseConv2d(nn.Module):
    """k×k conv (stride 1, same padding, no bias) whose weight is masked by the top-(1−p) learned |scores|.

    Scores start at |w|/sqrt(fan_in) (HYDRA's scaled init: the first mask is the magnitude mask, at a scale that
    does not depend on the layer's width). ``freeze_weight = True`` leaves only the scores trainable.
    """

    def __init__(self, c_in: int, c_out: int, kernel: int = 3, ratio: float = 0.9, groups: int = 1):
        super().__init__()
        self.ratio, self.groups, self.padding = check_ratio(ratio), groups, kernel // 2
        self.weight = nn.Parameter(torch.empty(c_out, c_in // groups, kernel, kernel))
        nn.init.kaiming_normal_(self.weight, nonlinearity="relu")
        fan_in = self.weight[0].numel()
        self.scores = nn.Parameter(self.weight.detach().abs() / math.sqrt(fan_in))

    @property
    def freeze_weight(self) -> bool:
        """Whether the weight is frozen (score learning only)."""
        return not self.weight.requires_grad

    @freeze_weight.setter
    def freeze_weight(self, value: bool) -> None:
        self.weight.requires_grad_(not value)

    def mask(self) -> Tensor:
        """The current boolean mask (exactly numel − round(p·numel) True)."""
        return keep_top(self.scores.detach().abs(), _kept(self.scores.numel(), self.ratio))

    def effective_weight(self) -> Tensor:
        """w ⊙ m(scores), differentiable in both (STE for the scores: dL/ds = dL/d(w⊙m) ⊙ w ⊙ sign(s))."""
        return self.weight * topk_mask(self.scores, self.ratio)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.effective_weight(), None, 1, self.padding, 1, self.groups)


# -- ops, mixed ops, cells ----------------------------------------------------------------------------------------


def make_op(name: str, C: int, ratio: float, *, derived: bool = False) -> nn.Module:
    """One candidate op at C channels, stride 1. ``derived``: plain convs, and ``sparseconv3`` → dense conv3."""
    conv = nn.Conv2d if derived else MaskableConv2d
    if name == "skip":
        return nn.Identity()
    if name == "maxpool":
        return nn.MaxPool2d(3, stride=1, padding=1)
    if name == "conv3" or (derived and name == "sparseconv3"):
        layer: nn.Module = conv(C, C, 3, padding=1, bias=False)
        return nn.Sequential(nn.ReLU(), layer, nn.BatchNorm2d(C, affine=derived))
    if name == "sepconv3":
        dw, pw = conv(C, C, 3, padding=1, groups=C, bias=False), conv(C, C, 1, bias=False)
        return nn.Sequential(nn.ReLU(), dw, pw, nn.BatchNorm2d(C, affine=derived))
    if name == "sparseconv3":
        return nn.Sequential(nn.ReLU(), SparseConv2d(C, C, 3, ratio), nn.BatchNorm2d(C, affine=False))
    raise ConfigError(OPS_FIELD, f"got {name!r}; allowed: {', '.join(OPS)}")


def _preprocess(c_in: int, C: int, affine: bool) -> nn.Module:
    return nn.Sequential(nn.ReLU(), nn.Conv2d(c_in, C, 1, bias=False), nn.BatchNorm2d(C, affine=affine))


def _stem(in_channels: int, C: int) -> nn.Module:
    """3×3 conv to 3·C channels at stride 2 (CPU scale: the cells run at half resolution, 14² on MNIST, 16² on
    CIFAR — a quarter of the multiply-adds of DARTS's stride-1 stem) + BN."""
    return nn.Sequential(nn.Conv2d(in_channels, STEM_MULT * C, 3, stride=2, padding=1, bias=False),
                         nn.BatchNorm2d(STEM_MULT * C))


class MixedOp(nn.Module):
    """One edge of the supernet: the softmax(α_edge)-weighted sum of every candidate op."""

    def __init__(self, C: int, ops: Sequence[str], ratio: float):
        super().__init__()
        self.ops = nn.ModuleList(make_op(name, C, ratio) for name in ops)

    def forward(self, x: Tensor, weights: Tensor) -> Tensor:
        return sum(w * op(x) for w, op in zip(weights, self.ops))


class Cell(nn.Module):
    """DARTS normal cell (stride 1): node i sums MixedOps over all earlier states; output = concat of the nodes."""

    def __init__(self, c_pp: int, c_p: int, C: int, nodes: int, ops: Sequence[str], ratio: float):
        super().__init__()
        self.nodes = nodes
        self.pre0, self.pre1 = _preprocess(c_pp, C, False), _preprocess(c_p, C, False)
        self.edges = nn.ModuleList(MixedOp(C, ops, ratio) for _ in range(num_edges(nodes)))

    def forward(self, s0: Tensor, s1: Tensor, weights: Tensor) -> Tensor:
        states, e = [self.pre0(s0), self.pre1(s1)], 0
        for _ in range(self.nodes):
            states.append(sum(self.edges[e + j](h, weights[e + j]) for j, h in enumerate(states)))
            e += len(states) - 1
        return torch.cat(states[2:], dim=1)


class Supernet(nn.Module):
    """The DARTS supernet: stem (3·C) → ``cells`` normal cells sharing ``alphas`` → global pool → linear.

    ``alphas`` ([edges, len(ops)], 1e-3·randn) is the only architecture parameter. ``ratio`` is p for the
    ``sparseconv3`` op and for the ``sparsified()`` mode of the other parametric ops.
    """

    def __init__(self, in_channels: int, num_classes: int, C: int = 8, cells: int = 1, nodes: int = 4,
                 ops: Iterable[str] = OPS, ratio: float = 0.9, field: str = OPS_FIELD):
        super().__init__()
        _check_cells(cells, C, nodes)
        self.ops, self.nodes, self.ratio = check_ops(ops, field), nodes, check_ratio(ratio)
        self.stem = _stem(in_channels, C)
        c_pp = c_p = STEM_MULT * C
        self.cells = nn.ModuleList()
        for _ in range(cells):
            self.cells.append(Cell(c_pp, c_p, C, nodes, self.ops, self.ratio))
            c_pp, c_p = c_p, nodes * C
        self.classifier = nn.Linear(c_p, num_classes)
        self.alphas = nn.Parameter(1e-3 * torch.randn(num_edges(nodes), len(self.ops)))
        self._sparse = False

    def arch_parameters(self) -> list[nn.Parameter]:
        """α only (optimised on validation batches)."""
        return [self.alphas]

    def weight_parameters(self) -> list[nn.Parameter]:
        """Everything but α, SparseConv scores included (optimised on training batches)."""
        return [p for n, p in self.named_parameters() if n != "alphas"]

    @property
    def is_sparsified(self) -> bool:
        """Whether conv3 / sepconv3 currently run magnitude-masked at p."""
        return self._sparse

    def sparsify(self, on: bool) -> None:
        """Switch the magnitude masks of conv3 / sepconv3 on or off (sparseconv3 is always sparse)."""
        self._sparse = bool(on)
        for m in self.modules():
            if isinstance(m, MaskableConv2d):
                m.ratio = self.ratio if on else None

    @contextmanager
    def sparsified(self, on: bool = True) -> Iterator[Supernet]:
        """``with net.sparsified(): ...`` runs the pruned supernet, then restores the previous mode."""
        before = self._sparse
        self.sparsify(on)
        try:
            yield self
        finally:
            self.sparsify(before)

    def forward(self, x: Tensor) -> Tensor:
        weights = F.softmax(self.alphas, dim=-1)
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, weights)
        return self.classifier(s1.mean(dim=(2, 3)))


# -- the discrete architecture ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Genotype:
    """The derived cell: per node, exactly two (op name, input state index) pairs; states 0, 1 are the inputs."""

    edges: tuple[tuple[tuple[str, int], ...], ...]
    nodes: int
    ops: tuple[str, ...]


def derive(alphas: Tensor, ops: Sequence[str], nodes: int = 4) -> Genotype:
    """DARTS's rule: each edge's strongest op (by softmax weight), then each node's 2 strongest edges.

    Ties go to the lowest index, so the result is a deterministic function of ``alphas``.
    """
    ops = check_ops(ops)
    if tuple(alphas.shape) != (num_edges(nodes), len(ops)):
        raise ValueError(f"alphas of shape {list(alphas.shape)} do not fit {nodes} nodes × {len(ops)} ops")
    weights = F.softmax(alphas.detach().double().cpu(), dim=-1).tolist()
    edges, e = [], 0
    for i in range(nodes):
        best = []  # (strength, input index, op index) per incoming edge
        for j in range(2 + i):
            row = weights[e + j]
            o = min(range(len(ops)), key=lambda k: (-row[k], k))
            best.append((row[o], j, o))
        e += 2 + i
        top = sorted(best, key=lambda t: (-t[0], t[1]))[:2]
        edges.append(tuple((ops[o], j) for _, j, o in sorted(top, key=lambda t: t[1])))
    return Genotype(tuple(edges), nodes, ops)


def _check_genotype(g: Genotype) -> None:
    if len(g.edges) != g.nodes:
        raise ValueError(f"genotype lists {len(g.edges)} nodes, expected {g.nodes}")
    for i, node in enumerate(g.edges):
        if len(node) != 2 or any(name not in OPS or not 0 <= j < 2 + i for name, j in node):
            raise ValueError(f"genotype node {i} must hold two (op, input < {2 + i}) pairs; got {node}")


class DerivedCell(nn.Module):
    """A discrete cell: node i = sum of its two chosen ops applied to its chosen inputs."""

    def __init__(self, genotype: Genotype, c_pp: int, c_p: int, C: int):
        super().__init__()
        self.inputs = [[j for _, j in node] for node in genotype.edges]
        self.pre0, self.pre1 = _preprocess(c_pp, C, True), _preprocess(c_p, C, True)
        self.ops = nn.ModuleList(make_op(name, C, 0.0, derived=True) for node in genotype.edges for name, _ in node)

    def forward(self, s0: Tensor, s1: Tensor) -> Tensor:
        states = [self.pre0(s0), self.pre1(s1)]
        for i, inputs in enumerate(self.inputs):
            states.append(sum(self.ops[2 * i + k](states[j]) for k, j in enumerate(inputs)))
        return torch.cat(states[2:], dim=1)


class DerivedNet(nn.Module):
    """The derived network: the supernet's stem / preprocess / classifier layout around discrete cells.

    ``sparseconv3`` becomes a dense conv3 here: the derived net is trained dense, then pruned by scores learned
    afterwards (``studies.darts_search.learn_scores``), so every conv / linear weight is an ordinary ``weight``.
    """

    def __init__(self, genotype: Genotype, in_channels: int, num_classes: int, C: int = 8, cells: int = 1):
        super().__init__()
        _check_cells(cells, C, genotype.nodes)
        _check_genotype(genotype)
        self.stem = _stem(in_channels, C)
        c_pp = c_p = STEM_MULT * C
        self.cells = nn.ModuleList()
        for _ in range(cells):
            self.cells.append(DerivedCell(genotype, c_pp, c_p, C))
            c_pp, c_p = c_p, genotype.nodes * C
        self.classifier = nn.Linear(c_p, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1)
        return self.classifier(s1.mean(dim=(2, 3)))


class HandCNN(nn.Module):
    """Hand-designed baseline: the same stem (3·C), ``layers`` × (ReLU → conv3 → BN) at ``width``, pool, linear.

    ``width`` defaults to 2·C; ``hand_cnn_like`` picks the width whose parameter count is closest to a given
    model's, so the comparison with a derived net is at (roughly) equal size.
    """

    def __init__(self, in_channels: int, num_classes: int, C: int = 8, layers: int = 3, width: int | None = None):
        super().__init__()
        if not isinstance(layers, int) or layers < 1:
            raise ConfigError("method.schedule.hand_layers", f"got {layers!r}; must be an integer >= 1")
        width = 2 * C if width is None else width
        self.stem = _stem(in_channels, C)
        body, c = [], STEM_MULT * C
        for _ in range(layers):
            body += [nn.ReLU(), nn.Conv2d(c, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)]
            c = width
        self.body = nn.Sequential(*body)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.body(self.stem(x)).mean(dim=(2, 3)))


def hand_cnn_like(model: nn.Module, in_channels: int, num_classes: int, C: int = 8, layers: int = 3) -> HandCNN:
    """The ``HandCNN`` (width 1…8·C) whose parameter count is closest to ``model``'s (ties: narrower)."""
    target = param_count(model)
    sizes = {w: param_count(HandCNN(in_channels, num_classes, C, layers, w)) for w in range(1, 8 * C + 1)}
    width = min(sizes, key=lambda w: (abs(sizes[w] - target), w))
    return HandCNN(in_channels, num_classes, C, layers, width)
