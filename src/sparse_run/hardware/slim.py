"""Channel pruning executed as a physically smaller dense model (target ``slim``).

An output channel (neuron / filter) whose mask row is all pruned is removed from its layer, from
every BatchNorm between it and the layers that read it, and from those readers' inputs. What the
dead channel still emits — its bias pushed through BatchNorm and the activation, a constant — is
folded into each reader's bias, so the slim model computes the same function as the masked one.

Dependencies are found by tracing the model with ``torch.fx`` and walking from each pruned layer
through channel-wise ops (activations, dropout, BatchNorm, pooling, flatten) to the Linear / Conv
layers that read it. A channel is kept (not removed) when the walk meets anything else — a
residual ``add``, a ``cat``, the model output — or when folding would not be exact (a non-zero
constant read by a zero-padded convolution). Why our own ~150 lines instead of Torch-Pruning: it
is not installable offline here, and its goal differs — it prunes by its own importance and
rewires the graph, while we must remove exactly the channels the run's masks already killed and
prove the outputs unchanged; a conservative walk that refuses what it cannot fold exactly is
simpler to verify than a general dependency graph.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from ..sparsity.patterns import as_matrix
from .execute import module_of, set_module

LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
PASS_MODULES = (nn.ReLU, nn.ReLU6, nn.GELU, nn.Tanh, nn.Sigmoid, nn.SiLU, nn.LeakyReLU, nn.ELU, nn.Dropout,
                nn.Identity, nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)
PASS_FUNCS = {torch.relu, F.relu, torch.tanh, torch.sigmoid, F.gelu, F.silu, F.dropout, F.max_pool2d,
              F.avg_pool2d, F.adaptive_avg_pool2d, torch.nn.functional.relu6}
PASS_METHODS = {"relu", "tanh", "sigmoid", "contiguous"}


@dataclass
class Plan:
    """Kept indices: output channels per layer / norm, input columns per reader."""

    out_keep: dict[str, list[int]] = field(default_factory=dict)
    in_keep: dict[str, list[int]] = field(default_factory=dict)
    norm_keep: dict[str, list[int]] = field(default_factory=dict)
    bias: dict[str, torch.Tensor] = field(default_factory=dict)  # readers' folded biases
    kept_reason: dict[str, str] = field(default_factory=dict)    # layers left whole, and why

    def to_json(self) -> dict:
        return {"out_keep": self.out_keep, "in_keep": self.in_keep, "norm_keep": self.norm_keep,
                "kept_reason": self.kept_reason}


@dataclass
class _Reader:
    node: fx.Node
    cols_per_channel: int  # 1, or H·W when a flatten sits between a conv and a Linear


def _walk(start: fx.Node, modules: dict[str, nn.Module], shapes: dict[str, tuple]) -> tuple[list[_Reader], list[str]] | str:
    """Readers of ``start``'s channels and the norms on the way, or the reason the walk stops."""
    readers: list[_Reader] = []
    norms: list[str] = []
    stack = [(u, 1) for u in start.users]
    while stack:
        node, per = stack.pop()
        mod = modules.get(node.target) if node.op == "call_module" else None
        if isinstance(mod, LAYERS):
            if getattr(mod, "groups", 1) != 1:
                return "channels reach a grouped / depthwise convolution"
            readers.append(_Reader(node, per))
            continue
        if isinstance(mod, NORMS):
            norms.append(str(node.target))
        elif isinstance(mod, PASS_MODULES) or (node.op == "call_function" and node.target in PASS_FUNCS) \
                or (node.op == "call_method" and node.target in PASS_METHODS):
            pass
        elif (node.op == "call_function" and node.target is torch.flatten) or \
                (node.op == "call_method" and node.target == "flatten"):
            shape = shapes.get(node.args[0].name)
            if shape is None or len(shape) < 2:
                return "flatten of unknown shape"
            per = per * int(torch.tensor(shape[2:]).prod()) if len(shape) > 2 else per
        else:
            return f"channels reach {node.op} {getattr(node.target, '__name__', node.target)}"
        stack.extend((u, per) for u in node.users)
    return readers, norms


def plan(model: nn.Module, masks: dict[str, torch.Tensor], example: torch.Tensor) -> Plan:
    """Which channels can be removed exactly, with the bias folds that keep outputs unchanged."""
    model = model.eval()
    gm = fx.symbolic_trace(model)
    modules = dict(gm.named_modules())
    ShapeProp(gm).propagate(example)
    shapes = {n.name: tuple(n.meta["tensor_meta"].shape) for n in gm.graph.nodes
              if hasattr(n.meta.get("tensor_meta"), "shape")}
    # inputs each reader sees on the example, to read off the constants dead channels emit
    seen: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_pre_hook(lambda m, a, name=n: seen.__setitem__(name, a[0].detach()))
             for n, m in model.named_modules() if isinstance(m, LAYERS)]
    with torch.no_grad():
        model(example)
    for h in hooks:
        h.remove()

    p = Plan()
    readers_cols: dict[str, set[int]] = {}
    for pname, mask in masks.items():
        path = module_of(pname)
        layer = modules.get(path)
        if not isinstance(layer, LAYERS) or getattr(layer, "groups", 1) != 1:
            continue
        dead = (~as_matrix(mask).bool().any(dim=1)).nonzero().flatten().tolist()
        if not dead:
            continue
        node = next(n for n in gm.graph.nodes if n.op == "call_module" and n.target == path)
        walked = _walk(node, modules, shapes)
        if isinstance(walked, str):
            p.kept_reason[path] = walked
            continue
        readers, norms = walked
        removable = []
        for ch in dead:
            if all(_foldable(modules[str(r.node.target)], seen[str(r.node.target)], ch, r.cols_per_channel)
                   for r in readers):
                removable.append(ch)
        if len(removable) == layer.weight.shape[0]:  # keep one channel so no layer has zero width
            removable = removable[1:]
        if not removable:
            p.kept_reason[path] = "dead channels feed a zero-padded conv with a non-zero constant"
            continue
        gone = set(removable)
        keep = [c for c in range(layer.weight.shape[0]) if c not in gone]
        p.out_keep[path] = keep
        for n in norms:
            p.norm_keep[n] = keep
        for r in readers:
            name = str(r.node.target)
            cols = {c * r.cols_per_channel + k for c in gone for k in range(r.cols_per_channel)}
            reader = modules[name]
            p.bias[name] = _folded_bias(reader, seen[name], cols, p.bias.get(name))
            readers_cols.setdefault(name, set()).update(cols)
    for name, cols in readers_cols.items():
        width = modules[name].weight.shape[1]
        p.in_keep[name] = [c for c in range(width) if c not in cols]
    return p


def _channel_values(inp: torch.Tensor, reader: nn.Module, col: int) -> torch.Tensor:
    return inp[..., col] if isinstance(reader, nn.Linear) else inp[:, col]


def _foldable(reader: nn.Module, inp: torch.Tensor, ch: int, per: int) -> bool:
    """The dead channel reaches ``reader`` as a constant that can be folded into its bias exactly."""
    for col in range(ch * per, (ch + 1) * per):
        v = _channel_values(inp, reader, col)
        c = v.flatten()[0]
        if not torch.allclose(v, torch.full_like(v, float(c)), rtol=1e-6, atol=1e-7):
            return False
        padded = isinstance(reader, (nn.Conv1d, nn.Conv2d)) and any(
            p != 0 for p in (reader.padding if isinstance(reader.padding, tuple) else (1,)))
        if padded and float(c) != 0.0:
            return False
    return True


def _folded_bias(reader: nn.Module, inp: torch.Tensor, cols: set[int], bias: torch.Tensor | None) -> torch.Tensor:
    w = reader.weight.detach()
    b = bias.clone() if bias is not None else (reader.bias.detach().clone() if reader.bias is not None
                                               else torch.zeros(w.shape[0], dtype=w.dtype))
    for col in sorted(cols):
        c = _channel_values(inp, reader, col).flatten()[0]
        contrib = w[:, col] if isinstance(reader, nn.Linear) else w[:, col].reshape(w.shape[0], -1).sum(1)
        b += contrib * c
    return b


def _shrunk(mod: nn.Module, out_keep: list[int] | None, in_keep: list[int] | None) -> nn.Module:
    """A new layer / norm holding only the kept rows (outputs) and columns (inputs)."""
    w = mod.weight.detach()
    if isinstance(mod, NORMS):
        idx = torch.tensor(out_keep)
        new = type(mod)(len(out_keep), eps=mod.eps, momentum=mod.momentum, affine=mod.affine,
                        track_running_stats=mod.track_running_stats)
        for key in ("weight", "bias", "running_mean", "running_var"):
            src = getattr(mod, key)
            if src is not None:
                getattr(new, key).data.copy_(src.detach()[idx])
        return new.eval()
    rows = torch.tensor(out_keep) if out_keep is not None else torch.arange(w.shape[0])
    cols = torch.tensor(in_keep) if in_keep is not None else torch.arange(w.shape[1])
    w = w[rows][:, cols]
    if isinstance(mod, nn.Linear):
        new = nn.Linear(w.shape[1], w.shape[0], bias=True)
    else:
        new = type(mod)(w.shape[1], w.shape[0], mod.kernel_size, stride=mod.stride, padding=mod.padding,
                        dilation=mod.dilation, bias=True, padding_mode=mod.padding_mode)
    new.weight.data.copy_(w)
    new.bias.data.zero_()
    return new


def apply(model: nn.Module, p: Plan, *, with_weights: bool = True) -> nn.Module:
    """A copy of ``model`` shrunk by ``p`` (``with_weights=False``: shapes only, for loading a state dict)."""
    out = copy.deepcopy(model).eval()
    for path in sorted(set(p.out_keep) | set(p.in_keep) | set(p.norm_keep)):
        mod = out.get_submodule(path)
        if path in p.norm_keep:
            new = _shrunk(mod, p.norm_keep[path], None)
        else:
            new = _shrunk(mod, p.out_keep.get(path), p.in_keep.get(path))
            if with_weights:
                bias = p.bias.get(path, mod.bias.detach() if mod.bias is not None else torch.zeros(mod.weight.shape[0]))
                rows = p.out_keep.get(path)
                new.bias.data.copy_(bias[torch.tensor(rows)] if rows is not None else bias)
        set_module(out, path, new)
    return out


def slim(model: nn.Module, masks: dict[str, torch.Tensor], example: torch.Tensor) -> tuple[nn.Module, Plan]:
    """The physically smaller dense model equivalent to the masked ``model`` (and its plan)."""
    p = plan(model, masks, example)
    return apply(model, p), p
