"""Text tables: the console table of one run and the mean ± std table over seeds of a sweep or results root."""
from __future__ import annotations

import pandas as pd

from .collect import ROW_IDENTITY, _grouped, counted


def console_table(df: pd.DataFrame) -> str:
    """A compact table of a summary for the terminal, one line per row, with every column that tells
    rows apart (method, arm, pattern, seed, width …) when it varies. Small-dense rows are dense models:
    their density column shows the sparse level they are matched to, and an ``nnz`` column shows the
    non-zero parameters each row really has."""
    if df.empty:
        return "(no rows)"
    distinguishing = {"method": "method", "model_arm": "arm", "policy_arm": "scope", "graph_family": "graph",
                      "graph_seed": "graph seed", "seed": "seed"}
    cols = {c: name for c, name in distinguishing.items()
            if c in df and df[c].nunique(dropna=False) > 1 and not (c == "method" and "model_arm" in df
                                                                    and df.model_arm.nunique() > 1)}
    cols |= {"round": "round", "variant": "variant", "pattern": "pattern", "density": "density %"}
    small = df.variant.eq("small_dense") if "variant" in df else pd.Series(False, index=df.index)
    if small.any() and "nnz_params" in df:
        cols |= {"nnz_params": "nnz", "width": "width"}
    cols |= {"test_acc_at_early_stop": "acc@ES %", "early_stop_step": "ES step", "test_acc": "final acc %",
             "wall_s": "s"}
    if "test_acc_before_finetune" in df and df.test_acc_before_finetune.notna().any():
        cols["test_acc_before_finetune"] = "before ft %"
    if "status" in df and df.status.ne("ok").any():  # e.g. at_chance: say which rows learned nothing
        cols["status"] = "status"
    t = df[[c for c in cols if c in df]].copy()
    if small.any() and "target_density" in df:  # the matched level, not the narrow model's own 100 %
        t["density"] = t.density.where(~small, df.target_density)
    for c in ("density", "test_acc_at_early_stop", "test_acc", "test_acc_before_finetune"):
        if c in t:
            t[c] = (t[c] * 100).round(2)
    if "nnz_params" in t:
        t["nnz_params"] = t.nnz_params.astype("Int64")
    if "width" in t:
        t["width"] = t.width.round(4)
    t = t.astype(object).where(t.notna(), "").rename(columns=cols)
    out = t.to_string(index=False)
    if small.any():
        out += "\n(small_dense rows: density % is the matched sparse level; the model itself is dense, nnz as shown)"
    return out


def aggregate(df: pd.DataFrame) -> pd.DataFrame:
    """Mean ± std over seeds per experiment × budget × configuration group × method × variant × round
    (× pattern / arm where rows have them); each training counted once."""
    ok = counted(df).copy()
    if ok.empty:
        return pd.DataFrame()
    ok["round"] = ok["round"].astype("Int64")
    if "target_density" in ok:  # a small-dense model is dense: show the sparse level it is matched to
        ok["density"] = ok.density.where(ok.variant != "small_dense", ok.target_density)
    if "group" in ok:  # a dense row belongs to its dense configuration (shared by, e.g., every rate of a sweep)
        ok["group"] = _grouped(ok).dense_group.where(ok.variant == "dense", _grouped(ok).group)
    keys = [k for k in ("experiment", "budget", "group", "method", "variant", "round", *ROW_IDENTITY)
            if k in ok and (k not in ROW_IDENTITY or ok[k].notna().any())]
    g = ok.groupby(keys, dropna=False)
    out = g.agg(seeds=("seed", "nunique"), density=("density", "mean"),
                acc_es=("test_acc_at_early_stop", "mean"), acc_es_std=("test_acc_at_early_stop", lambda s: s.std(ddof=0)),
                es_step=("early_stop_step", "mean"), final_acc=("test_acc", "mean"),
                final_acc_std=("test_acc", lambda s: s.std(ddof=0))).reset_index()
    if "group" in out and (out.group == "").all():
        out = out.drop(columns="group")
    return out.sort_values([k for k in ("experiment", "group", "method", "round", "variant") if k in out])


def _pm(mean: float, sd: float, n: int) -> str:
    """``mean ± sd`` in %, or just the mean for a single seed (no spread to show)."""
    return f"{mean * 100:.2f}" if n < 2 else f"{mean * 100:.2f} ± {sd * 100:.2f}"


def format_table(agg: pd.DataFrame) -> str:
    if agg.empty:
        return "(no finished runs)"
    t = agg.copy()
    t["density %"] = (t.pop("density") * 100).round(2)
    t["acc@ES %"] = [_pm(m, s, n) for m, s, n in zip(t.pop("acc_es"), t.pop("acc_es_std"), t.seeds)]
    t["final %"] = [_pm(m, s, n) for m, s, n in zip(t.pop("final_acc"), t.pop("final_acc_std"), t.seeds)]
    t["ES step"] = t.pop("es_step").round(0).astype("Int64")  # <NA>: no step (an arm recorded as diverged)
    for c in ROW_IDENTITY:  # e.g. no scope on a dense row: blank, not NaN
        if c in t:
            t[c] = t[c].astype(object).where(t[c].notna(), "")
    return t.to_string(index=False)
