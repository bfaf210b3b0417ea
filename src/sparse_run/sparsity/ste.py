"""Training with N:M masks on a living dense weight: STE, SR-STE and BDWP.

Unlike the engine's ``MaskSet`` (which zeroes pruned weights for good), these methods keep the
dense weights W and mask only the computation: the mask E = NM(|W|) is recomputed from the
current W at every forward pass, so weights can move in and out of the pattern.

- STE: forward with W̃ = W ⊙ E; ∂L/∂W̃ is passed straight through to the dense W.
- SR-STE: the gradient of W becomes g + λ_W (1 − E) ⊙ W (``decay`` = λ_W), i.e.
  W ← W − γ(g(W̃) + λ_W (1 − E) ⊙ W) under SGD. ``decay=0`` skips the term (bit-exact STE).
- BDWP: forward Y = X (W ⊙ E_in)ᵀ; backward-data dX = dY (W ⊙ E_out), where E_out re-prunes the
  *forward-masked* weights W ⊙ E_in to N:M along the output dimension (the reduction axis of that
  GEMM), so E_out ⊆ E_in: the backward pass only uses weights the forward pass used (see
  ``bdwp_backward_mask``). The weight gradient dYᵀX stays dense (plus the SR-STE term on 1 − E_in).

Coexistence with ``MaskSet``: during training the arm's ``MaskSet`` is all-ones (nothing is
zeroed). ``NMTraining`` is a training-loop step hook; at the last step it hard-prunes — W ← W ⊙ E
via ``MaskSet.set(E)`` — and detaches, so the final evaluation, the checkpoint and the summary all
see the exported model, whose pruned weights are exactly zero.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .masks import MaskSet
from .nm import Pattern, nm_mask

VARIANTS = ("ste", "srste", "bdwp")  # the dynamic-mask variants this module trains


class MaskedWeight(torch.autograd.Function):
    """W̃ = W ⊙ E forward; backward gives W the straight-through gradient g (+ decay·(1 − E) ⊙ W)."""

    @staticmethod
    def forward(ctx: Any, w: torch.Tensor, mask: torch.Tensor, decay: float) -> torch.Tensor:
        ctx.decay = decay
        if decay:
            ctx.save_for_backward(w, mask)
        return w * mask

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        if ctx.decay:
            w, mask = ctx.saved_tensors
            g = g + ctx.decay * (~mask) * w
        return g, None, None


class BDWPFunction(torch.autograd.Function):
    """Linear / Conv2d with a forward mask E_in and a backward-data mask E_out (``bdwp_backward_mask``)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, e_in: torch.Tensor,
                e_out: torch.Tensor, decay: float, conv: dict[str, Any] | None) -> torch.Tensor:
        ctx.decay, ctx.conv, ctx.has_bias = decay, conv, b is not None
        ctx.save_for_backward(x, w, e_in, e_out)
        if conv is None:
            return F.linear(x, w * e_in, b)
        return F.conv2d(x, w * e_in, b, **conv)

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[Any, ...]:
        x, w, e_in, e_out = ctx.saved_tensors
        dx = dw = db = None
        if ctx.conv is None:
            if ctx.needs_input_grad[0]:
                dx = dy @ (w * e_out)
            if ctx.needs_input_grad[1]:
                dw = dy.reshape(-1, dy.shape[-1]).t() @ x.reshape(-1, x.shape[-1])
            if ctx.has_bias and ctx.needs_input_grad[2]:
                db = dy.reshape(-1, dy.shape[-1]).sum(0)
        else:
            if ctx.needs_input_grad[0]:
                dx = torch.nn.grad.conv2d_input(x.shape, w * e_out, dy, **ctx.conv)
            if ctx.needs_input_grad[1]:
                dw = torch.nn.grad.conv2d_weight(x, w.shape, dy, **ctx.conv)
            if ctx.has_bias and ctx.needs_input_grad[2]:
                db = dy.sum((0, 2, 3))
        if dw is not None and ctx.decay:
            dw = dw + ctx.decay * (~e_in) * w
        return dx, dw, db, None, None, None, None


@torch.no_grad()
def bdwp_backward_mask(w: torch.Tensor, e_in: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """BDWP's backward-data mask: the forward-sparse weights W ⊙ E_in, transposed, pruned again to N:M
    along the output dimension (groups of M consecutive outputs per input / NHWC input position).

    Fang et al. 2023 (arXiv 2309.13015), the BDWP method section (Sec. III as we recall it; only the
    abstract was readable from this workplace, so the section number is unverified): the BP stage
    prunes the FF stage's N:M-sparse weights a second time, in the transposed direction, so both
    weight GEMMs run N:M. Verified against the closest public method, Bi-Mask (Zhang et al. ICML 2023:
    its paper builds the backward mask from the magnitudes of the forward-masked weights, and its code,
    zyxxmu/Bi-Mask ``conv_type.py``, multiplies the forward mask by an N:M mask on |W ⊙ E_fwd|; its row-permutation
    search is not part of BDWP and is not done here). Hence E_out ⊆ E_in: a weight the forward pass
    did not use never enters dX; a group of M outputs with fewer than N forward weights keeps fewer
    than N (pruned entries score -inf and are never selected).
    """
    scores = torch.where(e_in, w.abs().float(), torch.tensor(-math.inf, device=w.device))
    return nm_mask(w, n, m, dim=0, scores=scores) & e_in


@dataclass
class NMLayer:
    name: str
    module: nn.Module
    pattern: Pattern

    def masks(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(E_in along the input dim / NHWC channels, BDWP's E_out ⊆ E_in along the output dim)."""
        n, m = self.pattern
        w = self.module.weight
        e_in = nm_mask(w, n, m, dim=1)
        return e_in, bdwp_backward_mask(w, e_in, n, m)

    def mask(self) -> torch.Tensor:
        n, m = self.pattern
        return nm_mask(self.module.weight, n, m, dim=1)


def _conv_args(mod: nn.Module) -> dict[str, Any]:
    return {"stride": mod.stride, "padding": mod.padding, "dilation": mod.dilation, "groups": mod.groups}


class NMTraining:
    """Installs N:M-masked forwards on the chosen layers and tracks the masks (SAD) over training.

    Also a ``train`` step hook: ``hook(step, model, masks)`` hard-prunes at ``final_step``;
    ``eval_metrics`` adds ``sad`` / ``sad_cum`` to each evaluation record; ``state_dict`` /
    ``load_state_dict`` carry the SAD state through a mid-arm resume.
    """

    def __init__(self, model: nn.Module, patterns: dict[str, Pattern], variant: str, decay: float,
                 final_step: int):
        if variant not in VARIANTS:
            raise ValueError(f"variant {variant!r} not in {VARIANTS}")
        self.variant, self.final_step = variant, int(final_step)
        self.decay = 0.0 if variant == "ste" else float(decay)
        mods = dict(model.named_modules())
        self.layers = [NMLayer(name, mods[name.rsplit(".", 1)[0] if "." in name else ""], p)
                       for name, p in patterns.items()]
        for layer in self.layers:
            if not isinstance(layer.module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                raise ValueError(f"{layer.name}: N:M training supports Linear and Conv layers")
            if variant == "bdwp" and not isinstance(layer.module, (nn.Linear, nn.Conv2d)):
                raise ValueError(f"{layer.name}: BDWP supports Linear and Conv2d layers")
        self.final: dict[str, torch.Tensor] | None = None
        self.final_bwd: dict[str, torch.Tensor] | None = None  # BDWP's E_out at the end (for reports)
        self.prev = self.current()
        self.sad_cum = 0
        self.sad_history: list[tuple[int, int]] = []
        self.attach()

    # -- masked forwards -----------------------------------------------------------------------
    def attach(self) -> None:
        for layer in self.layers:
            layer.module.forward = self._forward_fn(layer)  # instance attribute: state_dict unchanged

    def detach(self) -> None:
        for layer in self.layers:
            layer.module.__dict__.pop("forward", None)

    def _forward_fn(self, layer: NMLayer) -> Any:
        mod, decay = layer.module, self.decay
        if self.variant == "bdwp":
            conv = None if isinstance(mod, nn.Linear) else _conv_args(mod)

            def bdwp_forward(x: torch.Tensor) -> torch.Tensor:
                e_in, e_out = layer.masks()
                return BDWPFunction.apply(x, mod.weight, mod.bias, e_in, e_out, decay, conv)
            return bdwp_forward

        def ste_forward(x: torch.Tensor) -> torch.Tensor:
            w = MaskedWeight.apply(mod.weight, layer.mask(), decay)
            if isinstance(mod, nn.Linear):
                return F.linear(x, w, mod.bias)
            return mod._conv_forward(x, w, mod.bias)
        return ste_forward

    # -- masks and SAD -------------------------------------------------------------------------
    def current(self) -> dict[str, torch.Tensor]:
        """The forward masks E of the current weights (the final ones once hard-pruned)."""
        if self.final is not None:
            return self.final
        return {layer.name: layer.mask() for layer in self.layers}

    def backward_masks(self) -> dict[str, torch.Tensor]:
        return {layer.name: layer.masks()[1] for layer in self.layers}

    def eval_metrics(self, step: int) -> dict[str, int]:
        """SAD = ‖E_now − E_prev‖₁ summed over layers since the previous evaluation, and cumulative."""
        cur = self.current()
        flips = int(sum(int((cur[n] ^ self.prev[n]).sum()) for n in cur))
        self.sad_cum += flips
        self.prev = {n: m.clone() for n, m in cur.items()}
        self.sad_history.append((int(step), flips))
        return {"sad": flips, "sad_cum": self.sad_cum}

    def late_sad(self, fraction: float = 0.25) -> float:
        """Mean SAD per evaluation over the last ``fraction`` of training steps."""
        if not self.sad_history:
            return 0.0
        start = self.final_step * (1 - fraction)
        late = [f for s, f in self.sad_history if s > start] or [self.sad_history[-1][1]]
        return sum(late) / len(late)

    # -- training-loop hook ----------------------------------------------------------------------
    def __call__(self, step: int, model: nn.Module, masks: MaskSet) -> None:
        if step == self.final_step:
            self.finalize(masks)

    @torch.no_grad()
    def finalize(self, masks: MaskSet) -> None:
        """Hard-prune: W ← W ⊙ E (exact zeros) via the arm's MaskSet, and restore plain forwards."""
        final = self.current()
        if self.variant == "bdwp":
            self.final_bwd = self.backward_masks()
        new = masks.clone_masks()
        for name, mask in final.items():
            new[name] = mask
        masks.set(new)
        self.final = {n: m.clone() for n, m in final.items()}
        self.detach()

    # -- resume --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"prev": {n: m.cpu() for n, m in self.prev.items()}, "sad_cum": self.sad_cum,
                "sad_history": list(self.sad_history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        dev = self.layers[0].module.weight.device if self.layers else "cpu"
        self.prev = {n: m.to(dev) for n, m in state["prev"].items()}
        self.sad_cum, self.sad_history = int(state["sad_cum"]), list(state["sad_history"])
