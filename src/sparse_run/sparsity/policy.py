"""Layer policy: which weights are prunable and at what relative rate.

Defaults follow the papers: Linear / Conv weights are prunable, biases and normalisation layers
never are; the output layer can take a scaled rate (LTH prunes it at half the hidden rate) or be
left dense, and any parameter can be excluded or given its own rate by glob pattern.
"""
from __future__ import annotations

import fnmatch
from typing import Any

from torch import nn

from sparse_run.config.errors import ConfigError, choice

LAYER_TYPES = {"linear": (nn.Linear,), "conv": (nn.Conv1d, nn.Conv2d, nn.Conv3d),
               "rnn": (nn.RNNBase,), "embedding": (nn.Embedding,)}


def candidates(model: nn.Module, policy: Any) -> dict[str, nn.Parameter]:
    """All weights of the policy's layer types, in module order (first = input layer, last = output)."""
    for key in policy.layers:
        choice(key, "method.policy.layers", LAYER_TYPES)
    types = tuple(t for key in policy.layers for t in LAYER_TYPES[key])
    found: dict[str, nn.Parameter] = {}
    for mod_name, mod in model.named_modules():
        if isinstance(mod, types):
            for pname, p in mod.named_parameters(recurse=False):
                if pname.startswith("weight"):
                    found[f"{mod_name}.{pname}" if mod_name else pname] = p
    return found


def prunable(model: nn.Module, policy: Any) -> dict[str, nn.Parameter]:
    """Ordered ``{param_name: weight}`` of the prunable weights under ``policy``."""
    found = candidates(model, policy)
    names = list(found)
    if names and not policy.prune_first:
        found.pop(names[0])
    if names and not policy.prune_last:
        found.pop(names[-1], None)
    for pattern in policy.exclude:
        for n in [n for n in found if fnmatch.fnmatch(n, pattern)]:
            found.pop(n)
    if not found:
        raise ConfigError("method.policy", "no prunable weights left after the layer policy")
    return found


def rate_scales(model: nn.Module, policy: Any, names: list[str]) -> dict[str, float]:
    """Per-parameter multiplier of the method's pruning rate (1.0 unless the policy says otherwise)."""
    scales = {n: 1.0 for n in names}
    output = list(candidates(model, policy))[-1]
    if output in scales:
        scales[output] = float(policy.last_rate_scale)
    for pattern, scale in policy.rate_scale.items():
        for n in names:
            if fnmatch.fnmatch(n, pattern):
                scales[n] = float(scale)
    return scales
