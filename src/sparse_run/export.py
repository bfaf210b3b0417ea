"""``sparse-run-export RUN_DIR --format {masked,csr,slim,2of4}``: the final model in a plain format.

Each export is ``<RUN_DIR>/export/<format>/model.safetensors`` (tensors only) + ``model.json``
(format, resolved config, data spec, per-layer layout, the slim plan, and the round-trip check).
No pickled classes: anything that can read safetensors and JSON can load it. Before writing, the
pruned weights are re-checked to be exactly zero; after writing, the export is loaded back with
``load`` and its outputs compared with the masked model's on real test inputs.

- ``masked``: dense weights (zeros in) + boolean masks ``mask::<param>``.
- ``csr``: each masked weight as ``<param>::crow_indices / col_indices / values`` (int32); loads
  as CSR layers executed with ``torch.sparse.mm``.
- ``slim``: the physically smaller dense model (dead channels removed, constants folded).
- ``2of4``: each masked weight as kept values + their positions in each group of four (plain
  tensors, writable anywhere); loads densely, or on CUDA as semi-structured layers.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file
from torch import nn

from . import models
from .data.spec import DataSpec
from .hardware import slim as slim_mod
from .hardware.execute import SparseMatmulLayer, module_of, set_module
from .hardware.formats import assert_pruned_zero, csr_from_parts, csr_parts, decode_2of4, encode_2of4
from .store.files import load_state
from .sparsity import MaskSet, prunable
from .sparsity.patterns import is_nm

FORMATS = ("masked", "csr", "slim", "2of4")
TOLERANCE = 1e-4  # max |Δoutput| relative to max |output|


def _final(run_dir: Path) -> tuple[Any, nn.Module, MaskSet, DataSpec, torch.Tensor]:
    from .data import load as load_data

    cfg = OmegaConf.load(run_dir / "config.yaml")
    data = load_data(cfg.dataset, cfg.paths.data_dir, "cpu", train_subset=1, eval_subset=256)
    spec = data.spec
    final = load_state(run_dir / "checkpoints" / "final.pt", keys=("model", "masks"), map_location="cpu",
                       hint="re-run the experiment with restart=true to write it again")
    model = models.build(cfg.model, spec, int(cfg.seed))
    assert_pruned_zero(final["model"], final["masks"])  # exactly zero as trained, or nothing is exported
    model.load_state_dict(final["model"])
    masks = MaskSet(prunable(model, cfg.method.policy))
    masks.load_state_dict(final["masks"])
    return cfg, model.eval(), masks, spec, data.test_x


def export(run_dir: Path, fmt: str, out: Path | None = None) -> Path:
    """Write ``fmt`` of ``run_dir``'s final model; return the folder. Raises if the round trip fails."""
    run_dir = Path(run_dir)
    cfg, model, masks, spec, sample = _final(run_dir)
    if fmt != "masked":  # the compressed formats execute Linear / Conv layers; an embedding table has no such form
        odd = [n for n in masks.masks if not isinstance(model.get_submodule(module_of(n)), (nn.Linear, nn.Conv2d))]
        if odd:
            raise ValueError(f"format {fmt}: {', '.join(odd)} are not Linear / Conv weights; allowed for this "
                             "model: masked")
    out = Path(out or run_dir / "export" / fmt)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    tensors: dict[str, torch.Tensor] = {f"mask::{n}": m.contiguous() for n, m in masks.masks.items()}
    meta: dict[str, Any] = {"format": fmt, "config": OmegaConf.to_container(cfg, resolve=True),
                            "spec": {**dataclasses.asdict(spec), "input_shape": list(spec.input_shape)},
                            "masked": {n: list(m.shape) for n, m in masks.masks.items()}}
    if fmt == "masked":
        tensors.update(state)
    elif fmt == "csr":
        for k, v in state.items():
            if k in masks.masks:
                tensors.update({f"{k}::{part}": t.contiguous() for part, t in csr_parts(v).items()})
            else:
                tensors[k] = v
    elif fmt == "2of4":
        bad = [n for n, m in masks.masks.items() if not is_nm(m, 2, 4)]
        if bad:
            raise ValueError(f"format 2of4: masks of {', '.join(bad)} are not 2:4 (at most two kept weights in "
                             "every group of four inputs); prune with a 2:4 pattern first")
        for k, v in state.items():
            if k in masks.masks:
                tensors.update({f"{k}::{part}": t for part, t in encode_2of4(v).items()})
            else:
                tensors[k] = v
    elif fmt == "slim":
        small, plan = slim_mod.slim(model, masks.masks, sample[:64])
        tensors.update({k: v.detach().contiguous() for k, v in small.state_dict().items()})
        meta["plan"] = plan.to_json()
    else:
        raise ValueError(f"format: got {fmt!r}; allowed: {', '.join(FORMATS)}")
    save_file(tensors, str(out / "model.safetensors"))
    (out / "model.json").write_text(json.dumps(meta, indent=2))
    # round trip: the loaded export must compute what the masked model computes
    x = sample[:128]
    with torch.no_grad():
        ref = model(x)
        got = load(out)(x).float()
    diff = float((got - ref).abs().max())
    scale = float(ref.abs().max()) or 1.0
    meta["check"] = {"inputs": int(x.shape[0]), "max_abs_diff": diff, "max_abs_output": scale,
                     "ok": diff <= TOLERANCE * scale}
    (out / "model.json").write_text(json.dumps(meta, indent=2))
    if not meta["check"]["ok"]:
        raise RuntimeError(f"export {fmt}: loaded model differs from the masked model by {diff:.3g}")
    return out


def load(folder: Path, *, semi_structured: bool = False) -> nn.Module:
    """Rebuild an exported model from ``model.json`` + ``model.safetensors`` (no pickle involved)."""
    folder = Path(folder)
    meta = json.loads((folder / "model.json").read_text())
    tensors = load_file(str(folder / "model.safetensors"))
    cfg = OmegaConf.create(meta["config"])
    known = {f.name for f in dataclasses.fields(DataSpec)}  # older exports hold name, input_shape, num_classes only
    spec = DataSpec(**{**{k: v for k, v in meta["spec"].items() if k in known},
                       "input_shape": tuple(meta["spec"]["input_shape"])})
    model = models.build(cfg.model, spec, 0).eval()
    fmt = meta["format"]
    params = {k: v for k, v in tensors.items() if "::" not in k}
    if fmt == "slim":
        plan = slim_mod.Plan(**{k: v for k, v in meta["plan"].items()})
        model = slim_mod.apply(model, plan, with_weights=False)
        model.load_state_dict(params)
        return model
    if fmt in ("masked", "2of4", "csr"):
        for name, shape in meta["masked"].items():
            if fmt == "2of4":
                params[name] = decode_2of4({p: tensors[f"{name}::{p}"] for p in ("values", "positions")}, tuple(shape))
            elif fmt == "csr":
                params[name] = torch.zeros(shape)  # placeholder; the layer is swapped for its CSR form below
        model.load_state_dict(params)
    if fmt == "csr":
        for name, shape in meta["masked"].items():
            parts = {p: tensors[f"{name}::{p}"] for p in ("crow_indices", "col_indices", "values")}
            path = module_of(name)
            layer = model.get_submodule(path)
            csr = csr_from_parts(parts, (shape[0], int(torch.tensor(shape[1:]).prod())))
            set_module(model, path, SparseMatmulLayer(layer, csr))
    if fmt == "2of4" and semi_structured:
        from .hardware.execute import SemiStructuredLinear

        model = model.to("cuda", torch.float16)
        for name in meta["masked"]:
            path = module_of(name)
            set_module(model, path, SemiStructuredLinear(model.get_submodule(path), torch.float16))
    return model


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="sparse-run-export", description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--format", choices=FORMATS, default="masked")
    ap.add_argument("--out", type=Path, default=None, help="default: RUN_DIR/export/FORMAT")
    args = ap.parse_args(argv)
    if not (args.run_dir / "checkpoints" / "final.pt").exists():
        sys.exit(f"error: run_dir: {args.run_dir} has no checkpoints/final.pt (is it a finished run?)")
    try:
        out = export(args.run_dir, args.format, args.out)
    except (ValueError, RuntimeError, AssertionError) as e:
        sys.exit(f"error: {str(e).splitlines()[0]}")
    check = json.loads((out / "model.json").read_text())["check"]
    print(f"sparse-run-export: wrote {out} (outputs match the masked model: max |diff| "
          f"{check['max_abs_diff']:.2g} on {check['inputs']} test inputs)")


if __name__ == "__main__":
    main()
