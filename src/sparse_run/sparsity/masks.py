"""Binary masks kept beside the parameters they gate.

Masks are not folded into the weights: the training loop zeroes masked gradients before each
optimizer step, so optimizer state never builds on a pruned weight and it stays exactly zero under
any optimizer here (momentum, Adam moments, weight decay); after a mid-run mask change it also
re-applies the masks after each step. ``stray_weights`` checks the invariant at any time.
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
        self._active: tuple[list[nn.Parameter], list[torch.Tensor]] | None = None
        self.version = 0  # bumped by every mask change (``set``, ``changed``): sparse kernels rebuild their plans

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
        self.changed()
        self.apply_()

    def changed(self) -> None:
        """Declare that the masks were changed in place: cached float masks and kernel plans are rebuilt."""
        self._fmasks = self._active = None
        self.version += 1

    def clone_masks(self) -> dict[str, torch.Tensor]:
        return {n: m.clone() for n, m in self.masks.items()}

    # -- enforcement (hot path: one fused call each) --------------------------------------
    def _float_masks(self) -> list[torch.Tensor]:
        if self._fmasks is None:
            self._fmasks = [self.masks[n].to(p.dtype) for n, p in self.params.items()]
        return self._fmasks

    def _pruned(self) -> tuple[list[nn.Parameter], list[torch.Tensor]]:
        """The parameters that have pruned entries, with their float masks (all-ones masks, e.g.
        the dense round, cost nothing per step). One host sync per mask change."""
        if self._active is None:
            keep = [i for i, m in enumerate(self.masks.values()) if not bool(m.all())]
            params, fmasks = list(self.params.values()), self._float_masks()
            self._active = ([params[i] for i in keep], [fmasks[i] for i in keep])
        return self._active

    @torch.no_grad()
    def apply_(self) -> None:
        """Zero the pruned weights in place."""
        params, fmasks = self._pruned()
        if params:
            torch._foreach_mul_([p.data for p in params], fmasks)

    @torch.no_grad()
    def mask_grads_(self) -> None:
        """Zero the pruned weights' gradients so optimizer state never builds on them."""
        params, fmasks = self._pruned()
        # a parameter the forward pass did not use has no gradient; the others are masked anyway
        grads = [(p.grad, m) for p, m in zip(params, fmasks) if p.grad is not None]
        if grads:
            torch._foreach_mul_([g for g, _ in grads], [m for _, m in grads])

    @torch.no_grad()
    def stray_weights(self) -> torch.Tensor:
        """Number of pruned weights that are not exactly zero, as a device tensor (no host sync)."""
        counts = [((p != 0) & ~m).sum() for _, p, m in self]
        return torch.stack(counts).sum() if counts else torch.zeros((), dtype=torch.long)

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
