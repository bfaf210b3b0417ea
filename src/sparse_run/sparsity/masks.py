"""Binary masks kept beside the parameters they gate.

Masks are not folded into the weights: the training loop zeroes masked gradients before each
optimizer step and re-applies the masks after it, so pruned weights stay exactly zero under any
optimizer (momentum, Adam moments, weight decay) and the invariant can be checked at any time.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn


@dataclass
class LayerReport:
    name: str
    numel: int
    nonzeros: int
    target_density: float | None

    @property
    def density(self) -> float:
        return self.nonzeros / self.numel


class MaskSet:
    """Masks for a model's prunable parameters, keyed by parameter name."""

    def __init__(self, params: dict[str, nn.Parameter], masks: dict[str, torch.Tensor] | None = None):
        self.params = params
        self.masks = masks if masks is not None else {
            n: torch.ones_like(p, dtype=torch.bool) for n, p in params.items()}
        self._fmasks: list[torch.Tensor] | None = None

    # -- structure ------------------------------------------------------------------------
    def names(self) -> list[str]:
        return list(self.params)

    def __iter__(self) -> Iterator[tuple[str, nn.Parameter, torch.Tensor]]:
        for n, p in self.params.items():
            yield n, p, self.masks[n]

    def set(self, masks: dict[str, torch.Tensor]) -> None:
        """Replace the masks (after a pruning event) and zero the newly pruned weights."""
        assert set(masks) == set(self.params), "masks must cover exactly the prunable parameters"
        self.masks = {n: m.to(dtype=torch.bool, device=self.params[n].device) for n, m in masks.items()}
        self._fmasks = None
        self.apply_()

    def clone_masks(self) -> dict[str, torch.Tensor]:
        return {n: m.clone() for n, m in self.masks.items()}

    # -- enforcement (hot path: one fused call each) --------------------------------------
    def _float_masks(self) -> list[torch.Tensor]:
        if self._fmasks is None:
            self._fmasks = [self.masks[n].to(p.dtype) for n, p in self.params.items()]
        return self._fmasks

    @torch.no_grad()
    def apply_(self) -> None:
        """Zero the pruned weights in place."""
        if self.params:
            torch._foreach_mul_([p.data for p in self.params.values()], self._float_masks())

    @torch.no_grad()
    def mask_grads_(self) -> None:
        """Zero the pruned weights' gradients so optimizer state never builds on them."""
        grads = [p.grad for p in self.params.values()]
        if grads and all(g is not None for g in grads):
            torch._foreach_mul_(grads, self._float_masks())

    # -- accounting -----------------------------------------------------------------------
    def numel(self) -> int:
        return sum(m.numel() for m in self.masks.values())

    def nonzeros(self) -> int:
        return int(sum(int(m.sum()) for m in self.masks.values()))

    def density(self) -> float:
        total = self.numel()
        return self.nonzeros() / total if total else 1.0

    def report(self, targets: dict[str, float] | None = None) -> list[LayerReport]:
        return [LayerReport(n, m.numel(), int(m.sum()), (targets or {}).get(n)) for n, m in self.masks.items()]

    def violations(self) -> dict[str, int]:
        """Pruned entries whose weight is not exactly zero (should always be empty)."""
        out = {}
        for n, p, m in self:
            bad = int((p.detach()[~m] != 0).sum())
            if bad:
                out[n] = bad
        return out

    def check(self) -> None:
        bad = self.violations()
        if bad:
            raise AssertionError(f"pruned weights are not zero: {bad}")

    # -- persistence ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        return {n: m.detach().cpu() for n, m in self.masks.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.set({n: state[n] for n in self.params})
