"""``python -m sparse_run.models``: every shipped model config with its prunable weight count.

Counts are of the weights the layer policy can select (linear, conv and RNN weight matrices,
embedding tables; biases and BatchNorm never) on each model's reference input; docs/models.md's table is
this output.
"""
from __future__ import annotations

from importlib import resources

import torch
from omegaconf import OmegaConf

from sparse_run import models
from sparse_run.config.schema import ModelConfig
from sparse_run.data.spec import DataSpec
from sparse_run.sparsity import prunable

REFERENCE = {  # the input each model is counted on
    "mlp": DataSpec("mnist", (1, 28, 28), 10), "convfc": DataSpec("cifar10", (3, 32, 32), 10),
    "vgg": DataSpec("cifar10", (3, 32, 32), 10), "resnet": DataSpec("cifar10", (3, 32, 32), 10),
    "mobilenet_v2": DataSpec("cifar10", (3, 32, 32), 10), "mobilenet_v1": DataSpec("cifar10", (3, 32, 32), 10),
    "rnn": DataSpec("reber", (53,), 2, kind="tokens", vocab_size=8),
    "mf": DataSpec("implicit_synth", (2,), 2, kind="interactions", num_users=2000, num_items=1000),
    "vit": DataSpec("mnist", (1, 28, 28), 10), "moe": DataSpec("mnist", (1, 28, 28), 10),
}
POLICY = OmegaConf.create({"layers": ["linear", "conv", "rnn", "embedding"], "prune_first": True, "prune_last": True,
                           "exclude": [], "last_rate_scale": 1.0})


def counts(cfg, spec: DataSpec) -> dict[str, int]:
    """``{"linear": n, "conv": n, "rnn": n}`` prunable weights of ``cfg`` built for ``spec``."""
    model = models.build(cfg, spec, seed=0)
    out = {"linear": 0, "conv": 0, "rnn": 0, "embedding": 0}
    mods = dict(model.named_modules())
    for name, p in prunable(model, POLICY).items():
        mod = mods[name.rsplit(".", 1)[0]] if "." in name else model
        kind = ("rnn" if isinstance(mod, torch.nn.RNNBase) else "embedding" if isinstance(mod, torch.nn.Embedding)
                else "conv" if p.ndim > 2 else "linear")
        out[kind] += p.numel()
    return out


def main() -> None:
    root = resources.files("sparse_run.conf").joinpath("model")
    print("| model | input | prunable weights | conv | linear | rnn | embedding |\n|---|---|---|---|---|---|---|")
    for f in sorted(root.iterdir(), key=lambda f: f.name):
        if not f.name.endswith(".yaml"):
            continue
        raw = OmegaConf.create(f.read_text())
        raw.pop("defaults", None)
        cfg = OmegaConf.merge(OmegaConf.structured(ModelConfig), raw)  # the schema's defaults (width ...)
        spec = REFERENCE.get(cfg.arch)
        if spec is None:
            continue
        if cfg.name == "lenet5":
            spec = REFERENCE["mlp"]
        c = counts(cfg, spec)
        total = c["conv"] + c["linear"] + c["rnn"] or c["embedding"]  # embeddings count only where alone (mf)
        print(f"| `{cfg.name}` | {spec.name} {list(spec.input_shape)} | {total:,} | {c['conv']:,} | "
              f"{c['linear']:,} | {c['rnn']:,} | {c['embedding']:,} |")


if __name__ == "__main__":
    main()
