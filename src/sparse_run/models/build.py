"""Models (config group ``model/``): builders keyed by ``model.arch``.

A builder takes the model config and the data spec and returns an ``nn.Module`` whose weights
are drawn from ``model.init`` under the given seed. Which weights are prunable is decided by the
sparsity layer policy (``sparsity.policy``), not here.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import nn

from sparse_run.config import ConfigError, choice
from sparse_run.data.spec import DataSpec
from sparse_run.sparsity.permute import ChannelLink

from . import convnets, mf, mobilenet, moe, resnet, rnn, vit
from .activations import activation

INITS: dict[str, Callable[[torch.Tensor], Any] | None] = {
    "default": None,  # keep PyTorch's per-module init (e.g. U(±1/√H) for RNNs, as the sparse-RNN thesis)
    "glorot_normal": nn.init.xavier_normal_,
    "glorot_uniform": nn.init.xavier_uniform_,
    "kaiming_normal": lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu"),
    "kaiming_uniform": lambda w: nn.init.kaiming_uniform_(w, nonlinearity="relu"),
}


class MLP(nn.Module):
    """Fully connected ReLU network (LeNet-300-100 is ``hidden=[300, 100]``)."""

    def __init__(self, in_features: int, hidden: list[int], num_classes: int, act: str = "relu",
                 k: int | None = None):
        super().__init__()
        sizes = [in_features, *hidden]
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.acts = nn.ModuleList(activation(act, k, h) for h in hidden)  # modules: the sparsity probe hooks them
        self.out = nn.Linear(sizes[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for layer, act in zip(self.hidden, self.acts):
            x = act(layer(x))
        return self.out(x)

    def channel_links(self) -> list[ChannelLink]:
        """Each hidden layer's units may be reordered with the next layer's inputs (activations act per unit;
        Top-k is permutation-equivariant)."""
        names = [f"hidden.{i}" for i in range(len(self.hidden))] + ["out"]
        return [ChannelLink(a, b) for a, b in zip(names[:-1], names[1:])]


def _mlp(cfg: Any, spec: DataSpec) -> nn.Module:
    if spec.kind == "tokens":
        raise ConfigError("model.arch", f"mlp needs float inputs; dataset {spec.name} gives token ids (try model=rnn)")
    width = float(cfg.width)
    hidden = [max(1, int(round(h * width))) for h in cfg.hidden]
    return MLP(math.prod(spec.input_shape), hidden, spec.num_classes, str(cfg.activation), cfg.activation_k)


ARCHS: dict[str, Callable[[Any, DataSpec], nn.Module]] = {
    "mlp": _mlp,
    "convfc": convnets.convfc,              # LeNet-5, Conv-2 / 4 / 6
    "vgg": convnets.vgg,                    # CIFAR VGG-11 / 16 / 19 with BatchNorm
    "resnet": resnet.resnet,                # CIFAR ResNet-20 / 56 with BatchNorm
    "mobilenet_v2": mobilenet.mobilenet_v2,  # torchvision, width multiplier, no pretrained weights
    "mobilenet_v1": mobilenet.mobilenet_v1,  # small MobileNet-v1 (depthwise-separable blocks; group sparsity)
    "rnn": rnn.rnn,                         # tanh / relu / gru / lstm over sequences or tokens
    "mf": mf.mf,                            # matrix factorisation over (user, item) interactions
    "vit": vit.vit,                         # tiny Vision Transformer with ReLU MLPs (the Lazy Neuron study)
    "moe": moe.moe,                         # stem + one top-k MoE layer of gated-MLP experts (expert pruning)
}


def init_weights(model: nn.Module, init: str) -> None:
    """Weights of Linear/Conv layers (and RNN weight matrices) from ``init``; biases zero; norm
    layers at identity (PyTorch's default). ``default`` leaves every module's own init."""
    fn = INITS[init]
    if fn is None:
        return
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            fn(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.RNNBase):
            for name, p in m.named_parameters(recurse=False):
                (fn if name.startswith("weight") else nn.init.zeros_)(p)


def build(cfg: Any, spec: DataSpec, seed: int) -> nn.Module:
    """Build ``cfg.arch`` for ``spec`` with weights drawn under ``seed`` (global RNG untouched)."""
    choice(cfg.arch, "model.arch", ARCHS)
    choice(cfg.init, "model.init", INITS)
    if float(cfg.width) <= 0:
        raise ConfigError("model.width", f"got {cfg.width}; must be > 0")
    if spec.kind == "interactions" and cfg.arch != "mf":
        raise ConfigError("model.arch", f"got {cfg.arch!r}; dataset {spec.name} gives (user, item) interactions: "
                                        "allowed: mf")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ARCHS[cfg.arch](cfg, spec)
        init_weights(model, cfg.init)
    return model
