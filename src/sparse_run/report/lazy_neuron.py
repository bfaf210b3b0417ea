"""Figures of the Lazy Neuron study (``schedule.kind=lazy_neuron``; Li et al. 2023): the share of non-zero
activations over training (per ViT layer, per MLP width, per training-data condition), its final value against
width and condition, and Top-k against the ReLU baseline on clean accuracy, label-noise accuracy, corrupted-input
accuracy and calibration — paired differences with 95 % t-intervals over seeds (the arms of a seed share θ0 and
the data order).

Curves start at step 0 from the probe's reading at θ0 (the rows' ``init_act_*``) and continue with the probe's
readings at every evaluation (``metrics.jsonl``); each is the mean over seeds.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from .collect import run_files  # noqa: E402
from .plot import mean_interval, save_titled  # noqa: E402

CONDITION_STYLE = {"clean": ("tab:blue", "clean data"), "random_labels": ("tab:red", "random labels"),
                   "noise_inputs": ("tab:purple", "Gaussian-noise inputs"),
                   "label_noise": ("tab:orange", "label noise")}
ARM_KEYS = ["run_dir", "seed", "model", "variant", "condition"]


def is_lazy_neuron(df: pd.DataFrame) -> bool:
    return "condition" in df and df.condition.notna().any() and "init_act_nonzero_val" in df


def _mlps(df: pd.DataFrame) -> list[str]:
    """The MLP arms, narrowest first (their label's width: ``units``)."""
    relu = df[(df.variant == "relu") & df.model.str.startswith("mlp")]
    return list(relu.groupby("model").units.first().sort_values().index)


def _curves(df: pd.DataFrame, col: str) -> pd.DataFrame:
    """``col`` per (arm, step) with the θ0 reading as step 0: one row per arm and step."""
    m = run_files(df, "metrics.jsonl")
    if m.empty or col not in m:
        return pd.DataFrame(columns=[*ARM_KEYS, "step", col])
    m = m.merge(df[ARM_KEYS].drop_duplicates(), on=ARM_KEYS)[[*ARM_KEYS, "step", col]]
    init = df[[*ARM_KEYS, f"init_{col}"]].rename(columns={f"init_{col}": col}).assign(step=0) \
        if f"init_{col}" in df else df.iloc[0:0]
    return pd.concat([init, m], ignore_index=True).dropna(subset=[col])


def _plot_mean(ax: plt.Axes, c: pd.DataFrame, col: str, **style: object) -> None:
    g = c.groupby("step")[col].mean() * 100
    ax.plot(g.index, g.values, marker=".", ms=3, **style)


def curves_figure(df: pd.DataFrame, out: Path, title: str) -> Path:
    """Three panels: the ViT's layers (clean, validation inputs); the MLPs by width (clean, validation inputs); each
    condition, on the inputs the arm was trained on (mean over layers), ViT solid, widest MLP dashed."""
    relu = df[df.variant == "relu"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    vit = relu[(relu.condition == "clean") & ~relu.model.str.startswith("mlp")]
    layers = sorted(c[len("init_act_nonzero_val_"):] for c in df.columns if c.startswith("init_act_nonzero_val_")
                    and vit[c].notna().any())
    for i, layer in enumerate(layers):
        c = _curves(vit, f"act_nonzero_val_{layer}")
        _plot_mean(axes[0], c, f"act_nonzero_val_{layer}", color=plt.cm.viridis(i / max(1, len(layers) - 1)),
                   label=f"{layer} (n={c.run_dir.nunique()})")
    axes[0].set_title("ViT, clean: each MLP layer (validation inputs)", fontsize=9)
    mlps = _mlps(df)
    for i, name in enumerate(mlps):
        sub = relu[(relu.model == name) & (relu.condition == "clean")]
        c = _curves(sub, "act_nonzero_val")
        _plot_mean(axes[1], c, "act_nonzero_val", color=plt.cm.plasma(i / max(1, len(mlps))),
                   label=f"{name} (n={c.run_dir.nunique()})")
    axes[1].set_title("MLPs 784-w-10, clean: by width w (validation inputs)", fontsize=9)
    widest = mlps[-1] if mlps else None
    for cond in [c for c in CONDITION_STYLE if c in set(relu.condition)]:
        color, name = CONDITION_STYLE[cond]
        for model, ls in ((m, ls) for m, ls in ((vit.model.iloc[0] if len(vit) else None, "-"), (widest, "--")) if m):
            c = _curves(relu[(relu.model == model) & (relu.condition == cond)], "act_nonzero_train")
            if len(c):
                _plot_mean(axes[2], c, "act_nonzero_train", color=color, ls=ls, label=f"{model}: {name}")
    axes[2].set_title("per condition, on the arm's own training inputs (mean over layers)", fontsize=9)
    for ax in axes:
        ax.axhline(50, color="gray", lw=0.8, ls=":")
        ax.set_xlabel("training step (0: θ0)")
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    axes[0].set_ylabel("non-zero activations per token (%)")
    return save_titled(fig, out, title, df)


def final_figure(df: pd.DataFrame, out: Path, title: str) -> Path:
    """Left: final non-zero share against MLP width, one line per condition; right: the ViT per condition. Both on
    the arm's own training inputs, mean and 95 % t-interval over seeds, the θ0 reading as a hollow marker."""
    relu = df[df.variant == "relu"]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.4), gridspec_kw={"width_ratios": [3, 2]})
    mlp = relu[relu.model.str.startswith("mlp")]
    conds = [c for c in CONDITION_STYLE if c in set(relu.condition)]
    for cond in conds:
        color, name = CONDITION_STYLE[cond]
        sub = mlp[mlp.condition == cond]
        if not len(sub):
            continue
        g = sub.groupby("units").act_nonzero_train.apply(lambda s: mean_interval((s * 100).tolist()))
        ax.errorbar(g.index, [v[0] for v in g], yerr=[[v[0] - v[1] for v in g], [v[2] - v[0] for v in g]],
                    marker="o", capsize=3, color=color, label=f"{name} (n={sub.groupby('units').size().max()})")
        ax.plot(g.index, sub.groupby("units").init_act_nonzero_train.mean() * 100, "o", mfc="none", color=color)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(mlp.units.unique()), [str(int(u)) for u in sorted(mlp.units.unique())])
    ax.set_xlabel("MLP hidden width w (784-w-10)")
    ax.set_title("MLPs: end of training (filled) vs θ0 (hollow)", fontsize=9)
    vit = relu[~relu.model.str.startswith("mlp")]
    for i, cond in enumerate(conds):
        sub = vit[vit.condition == cond]
        if not len(sub):
            continue
        mean, lo, hi = mean_interval((sub.act_nonzero_train * 100).tolist())
        bx.bar(i, mean, color=CONDITION_STYLE[cond][0], alpha=0.8)
        bx.errorbar(i, mean, yerr=[[mean - lo], [hi - mean]], color="black", capsize=4)
        bx.plot(i, sub.init_act_nonzero_train.mean() * 100, "o", mfc="none", color="black")
        bx.text(i, max(hi, mean) + 1.5, f"{mean:.1f} % (n={len(sub)})", ha="center", fontsize=7)
    bx.set_xticks(range(len(conds)), [CONDITION_STYLE[c][1] for c in conds], fontsize=8)
    bx.set_title(f"{vit.model.iloc[0] if len(vit) else 'ViT'}: end of training (bars) vs θ0 (hollow)", fontsize=9)
    for axis in (ax, bx):
        axis.axhline(50, color="gray", lw=0.8, ls=":")
        axis.set_ylim(0, 60)
        axis.grid(True, alpha=0.3)
    ax.set_ylabel("non-zero activations per token (%), 95 % t-interval")
    ax.legend(fontsize=7)
    return save_titled(fig, out, title, df)


def topk_measures(df: pd.DataFrame) -> list[tuple[str, str, str, float]]:
    """(column, condition, label, scale) of each Top-k measure present: clean accuracy, accuracy after training on
    noisy labels, accuracy on each corruption of the test inputs, ECE."""
    out = [("test_acc", "clean", "clean test accuracy (pp)", 100.0)]
    if "label_noise" in set(df.condition):
        share = df[df.condition == "label_noise"].label_noise.dropna()
        out.append(("test_acc", "label_noise", f"test accuracy after {100 * float(share.iloc[0]):g} % label noise "
                                               "(pp)" if len(share) else "test accuracy, label noise (pp)", 100.0))
    for col in sorted((c for c in df.columns if c.startswith("test_acc_noise_")), key=lambda c: float(c.split("_")[-1])):
        out.append((col, "clean", f"accuracy, test inputs + N(0, {col.split('_')[-1]}²) (pp)", 100.0))
    if "test_ece" in df:
        out.append(("test_ece", "clean", "expected calibration error (pp; lower is better)", 100.0))
    return out


def topk_paired(df: pd.DataFrame, col: str, cond: str, scale: float) -> pd.DataFrame:
    """Per k: Top-k − ReLU on ``col`` under ``cond``, paired by run and seed (mean, 95 % t-interval, n)."""
    arm = df[(df.condition == cond) & df.model.isin(set(df[df.variant.str.startswith("top")].model))]
    base = arm[arm.variant == "relu"][["run_dir", "seed", col]]
    rows = []
    for v, sub in arm[arm.variant.str.startswith("top")].groupby("variant"):
        both = sub[["run_dir", "seed", col]].merge(base, on=["run_dir", "seed"], suffixes=("_a", "_b"))
        if len(both):
            mean, lo, hi = mean_interval(((both[f"{col}_a"] - both[f"{col}_b"]) * scale).tolist())
            rows.append({"k": int(str(v)[3:]), "mean": mean, "lo": lo, "hi": hi, "n": len(both),
                         "base": float(both[f"{col}_b"].mean() * scale)})
    return pd.DataFrame(rows).sort_values("k") if rows else pd.DataFrame(rows)


def topk_figure(df: pd.DataFrame, out: Path, title: str) -> Path | None:
    """One panel per measure: Top-k − ReLU baseline against k, paired by seed."""
    if not df.variant.str.startswith("top").any():
        return None
    measures = topk_measures(df)
    fig, axes = plt.subplots(1, len(measures), figsize=(3.4 * len(measures), 4), squeeze=False)
    for ax, (col, cond, label, scale) in zip(axes[0], measures):
        p = topk_paired(df, col, cond, scale)
        if len(p):
            ax.errorbar(range(len(p)), p["mean"], yerr=[p["mean"] - p.lo, p.hi - p["mean"]], fmt="o", capsize=4,
                        color="tab:green")
            ax.set_xticks(range(len(p)), [f"k={k}" for k in p.k])
            ax.set_title(f"{label}\nReLU baseline {p.base.iloc[0]:.2f}; n={int(p.n.max())}", fontsize=8)
        ax.axhline(0, color="black", lw=0.8)
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel("Top-k − ReLU (paired by seed), 95 % t-interval")
    return save_titled(fig, out, title, df)


def figures(df: pd.DataFrame, stem: str, title: str) -> list[Path]:
    """``<stem>lazy_curves.png``, ``<stem>lazy_final.png``, ``<stem>lazy_topk.png``."""
    made = [curves_figure(df, Path(f"{stem}lazy_curves.png"), title),
            final_figure(df, Path(f"{stem}lazy_final.png"), title),
            topk_figure(df, Path(f"{stem}lazy_topk.png"), title)]
    return [m for m in made if m is not None]
