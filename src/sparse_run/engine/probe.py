"""The activation-sparsity probe (Li et al. 2023, the Lazy Neuron phenomenon; ``../shared/papers.md`` §12): how many
post-activation values are exactly zero, per layer, per token, on a given set of inputs.

``ActivationProbe(model)`` hooks every ``nn.ReLU`` / ``models.activations.TopK`` (zero means ``== 0``) and
``nn.GELU`` (zero means ``|a| <= tau``, GELU never being exactly zero; ``tau`` is then part of the result's
meaning) while the ``with`` block runs — only there, so training steps pay nothing. Per layer it reports:

- ``nonzero``: the mean over tokens of the fraction of units that are non-zero for that token (a token is a row
  of the last dimension: an example for an MLP, a patch for a ViT);
- ``dead``: the fraction of units that are zero on every token seen (a unit dead on all inputs is a different
  thing from per-token sparsity, and is reported apart);
- ``tokens``: how many tokens were seen.

Counting runs on the device in float64 sums; the only host sync is ``report()``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sparse_run.config import number
from sparse_run.models.activations import TopK


@dataclass
class LayerSparsity:
    name: str
    nonzero: float
    dead: float
    tokens: int
    zero_means: str
    units: int  # the layer's width (activations per token)  # "== 0" or "|a| <= tau"


class ActivationProbe:
    """Context manager: hooks the model's activation modules, accumulates zero counts, removes the hooks on exit."""

    def __init__(self, model: nn.Module, tau: float = 0.0) -> None:
        number(tau, "probe.tau", lo=0)
        self.tau = float(tau)
        self.layers = {name: m for name, m in model.named_modules() if isinstance(m, (nn.ReLU, nn.GELU, TopK))}
        self._handles: list[Any] = []
        self._nonzero: dict[str, torch.Tensor] = {}
        self._tokens: dict[str, int] = {}
        self._alive: dict[str, torch.Tensor] = {}
        self._units: dict[str, int] = {}

    def _hook(self, name: str, gelu: bool) -> Any:
        def hook(_mod: nn.Module, _inp: Any, out: torch.Tensor) -> None:
            a = out.detach().reshape(-1, out.shape[-1])
            active = a.abs() > self.tau if gelu else a != 0
            frac = active.double().mean(dim=1).sum()
            self._nonzero[name] = self._nonzero.get(name, torch.zeros((), dtype=torch.float64, device=a.device)) + frac
            self._tokens[name] = self._tokens.get(name, 0) + a.shape[0]
            self._units[name] = a.shape[1]
            seen = active.any(dim=0)
            self._alive[name] = self._alive[name] | seen if name in self._alive else seen
        return hook

    def __enter__(self) -> "ActivationProbe":
        for name, m in self.layers.items():
            self._handles.append(m.register_forward_hook(self._hook(name, isinstance(m, nn.GELU))))
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def report(self) -> list[LayerSparsity]:
        """One row per hooked layer that saw at least one token."""
        out = []
        for name, m in self.layers.items():
            n = self._tokens.get(name, 0)
            if not n:
                continue
            out.append(LayerSparsity(name, float(self._nonzero[name]) / n, float((~self._alive[name]).double().mean()),
                                     n, f"|a| <= {self.tau:g}" if isinstance(m, nn.GELU) else "== 0",
                                     self._units[name]))
        return out


class ProbeHook:
    """A ``loop.StepHook`` that measures activation sparsity at every evaluation and never in a training step:
    the probe runs over fixed subsets (the first ``examples`` of a seeded permutation) of the training and the
    validation inputs. Evaluation records gain ``act_nonzero_{train,val}`` and ``act_dead_{train,val}`` (means over
    the activation layers) and ``act_nonzero_val_<layer>`` per layer."""

    def __init__(self, model: nn.Module, train_x: torch.Tensor, val_x: torch.Tensor, examples: int,
                 tau: float = 0.0, chunk: int = 4096) -> None:
        gen = torch.Generator().manual_seed(0)
        self.model, self.tau, self.chunk = model, float(tau), chunk
        self.inputs = {split: x[torch.randperm(x.shape[0], generator=gen)[:examples].to(x.device)]
                       for split, x in (("train", train_x), ("val", val_x))}
        self.units: dict[str, int] = {}  # per activation layer, as of the last measurement

    def __call__(self, step: int, model: nn.Module, masks: Any) -> None:
        return None

    @torch.no_grad()
    def eval_metrics(self, step: int) -> dict[str, float]:
        was_training = self.model.training
        self.model.eval()
        out: dict[str, float] = {}
        try:
            for split, x in self.inputs.items():
                with ActivationProbe(self.model, self.tau) as probe:
                    for i in range(0, x.shape[0], self.chunk):
                        self.model(x[i:i + self.chunk])
                rows = probe.report()
                if not rows:
                    continue
                self.units = {r.name: r.units for r in rows}
                out[f"act_nonzero_{split}"] = sum(r.nonzero for r in rows) / len(rows)
                out[f"act_dead_{split}"] = sum(r.dead for r in rows) / len(rows)
                if split == "val":
                    out.update({f"act_nonzero_val_{r.name}": r.nonzero for r in rows})
        finally:
            self.model.train(was_training)
        return out
