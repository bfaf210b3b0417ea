"""Gathering runs: every ``summary.csv`` under a run, sweep or results root with its configuration, the
configuration groups (which runs may be pooled, how to name what differs) and which rows count once."""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from sparse_run.store.schema import SUMMARY_COLUMNS


def _grouped(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with ``group`` / ``dense_group`` labels ("" for a single run's summary, which has none)."""
    return df.assign(**{c: df[c].fillna("").astype(str) if c in df else "" for c in ("group", "dense_group")})


# ---------------------------------------------------------------------------------------------
# Configuration groups: which runs may be pooled, and how to name what differs
# ---------------------------------------------------------------------------------------------

# config.yaml keys (dotted prefixes) that never change a result: where files go, how a run is logged,
# shown or scheduled, which kernel or device computes it, how the hardware timing is sampled.
NON_DETERMINING = ("seed", "claims", "paths", "logger", "progress", "threads", "hydra", "cache", "device", "hardware",
                   "dataset.root", "dataset.download", "train.checkpoint_every", "train.compile",
                   "train.linear_kernel", "train.sparse_kernel", "train.replicates")
# the keys that determine the dense (round 0) training: those of the cached dense stage (stages.stage_key)
DENSE_DETERMINING = ("name", "model", "dataset", "train", "budget.train_subset", "budget.eval_subset",
                     "method.schedule.models")
# summary columns that tell apart rows of one run that are not repeats (beyond method, variant, round)
ROW_IDENTITY = ("pattern", "model_arm", "policy_arm", "graph_family", "graph_seed")


def _flatten(d: Any, prefix: str = "") -> dict[str, str]:
    """Nested config → {dotted key: JSON of the value}; lists stay whole (a list is one setting)."""
    if isinstance(d, dict) and d:
        out: dict[str, str] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: json.dumps(d, sort_keys=True, default=str)} if prefix else {}


def _under(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def determining(cfg: dict[str, Any]) -> dict[str, str]:
    """The settings of an effective config that decide its results, minus the seed."""
    return {k: v for k, v in _flatten(cfg).items() if not _under(k, NON_DETERMINING)}


def _key(flat: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(flat, sort_keys=True).encode()).hexdigest()[:12]


def _show(v: str) -> str:
    value = json.loads(v)
    return value if isinstance(value, str) else json.dumps(value)


def group_labels(flats: dict[str, dict[str, str]], max_keys: int = 3) -> dict[str, str]:
    """Name each group by the keys whose values differ between the groups (``method.schedule.rate=0.2``);
    one group (or none differing) → ``""``."""
    keys = sorted({k for f in flats.values() for k in f})
    differ = [k for k in keys if len({f.get(k, "<absent>") for f in flats.values()}) > 1]
    out = {}
    for gk, f in flats.items():
        parts = [f"{k}={_show(f[k]) if k in f else '(absent)'}" for k in differ]
        out[gk] = ", ".join(parts[:max_keys]) + (f", +{len(parts) - max_keys} more" if len(parts) > max_keys else "")
    return out


# ---------------------------------------------------------------------------------------------
# Aggregation over runs, sweeps and results roots
# ---------------------------------------------------------------------------------------------

def job_config(d: Path) -> dict[str, Any]:
    import yaml

    for cand in (d / "config.yaml", d / ".hydra" / "config.yaml"):
        if cand.exists():
            try:
                loaded = yaml.safe_load(cand.read_text())
            except (yaml.YAMLError, UnicodeDecodeError, OSError):
                print(f"sparse-run-report: warning: {cand} is unreadable; that run is grouped by its overrides only",
                      file=sys.stderr)
                return {}
            return loaded if isinstance(loaded, dict) else {}
    return {}


def job_meta(d: Path) -> dict[str, Any]:
    """``run.json``, or a failed-status stand-in naming the problem (a report never stops on one bad run)."""
    f = d / "run.json"
    if not f.exists():
        return {"status": "failed", "error": "no run.json"}
    try:
        meta = json.loads(f.read_text())
    except (ValueError, UnicodeDecodeError, OSError) as e:
        return {"status": "failed", "error": f"unreadable {f.name} ({type(e).__name__})"}
    return meta if isinstance(meta, dict) else {"status": "failed", "error": f"unreadable {f.name} (not an object)"}


def canonical_override(override: str) -> str:
    """One spelling per override: a sweep records a boolean as Python writes it (``dense=False``), a claim as
    YAML does (``dense=false``)."""
    key, eq, value = override.lstrip("+~").partition("=")
    return f"{key}{eq}{value.lower()}" if value in ("True", "False") else f"{key}{eq}{value}"


def run_seed(run_dir: Path) -> int:
    """The run's own seed (``config.yaml``); without one, a stable stand-in derived from its path."""
    seed = job_config(Path(run_dir)).get("seed")
    if isinstance(seed, int):
        return seed
    return int(hashlib.sha256(str(run_dir).encode()).hexdigest()[:8], 16)


def job_overrides(d: Path, skip: tuple[str, ...]) -> list[str]:
    """The job's command-line overrides (``.hydra/overrides.yaml``), minus those starting with ``skip``."""
    import yaml

    f = d / ".hydra" / "overrides.yaml"
    try:
        items = (yaml.safe_load(f.read_text()) or []) if f.exists() else []
    except (yaml.YAMLError, OSError, UnicodeDecodeError):
        return []
    return [o for o in map(str, items) if not o.lstrip("+~").startswith(skip)]


def _sweep_label(d: Path) -> str:
    """The job's command-line overrides minus seed and output settings: what distinguishes it in a sweep."""
    skip = ("seed=", "paths.", "experiment=", "logger", "hydra/", "threads=", "device=", "progress=", "budget=")
    return ",".join(job_overrides(d, skip))


def job_dirs(root: Path) -> list[Path]:
    """Every directory under ``root`` a job wrote (its ``run.json``, or only Hydra's record: it failed early)."""
    root = Path(root)
    return sorted({p.parent for p in root.rglob("run.json")} | {p.parent.parent for p in root.rglob(".hydra/config.yaml")})


def collect(root: Path) -> pd.DataFrame:
    """Every run under ``root`` as summary rows; a failed or unfinished job becomes one row whose
    ``status`` says so (with its error), so a sweep with failures still aggregates.

    Each row also gets ``group`` (what distinguishes its run's configuration from the other runs of the
    same experiment × budget, from ``config.yaml``; seeds, paths, loggers, threads … don't count),
    ``dense_group`` (the same for the settings of the dense training) and ``counted`` (False for a row
    that repeats a training another run already holds: a cached dense stage reused by several jobs)."""
    root = Path(root)
    frames, seen = [], set()
    flats: dict[str, dict[str, str]] = {}
    for d in job_dirs(root):
        meta = job_meta(d)
        summary = d / "summary.csv"
        sweep = _sweep_label(d)
        chash = meta.get("config_hash") if meta.get("status") == "complete" else None
        if chash and chash in seen:  # the same config run twice (e.g. with and without seed=0)
            continue
        seen.add(chash)
        cfg = job_config(d)
        if summary.exists() and meta.get("status") == "complete":
            flat = determining(cfg) if cfg else {"(overrides)": json.dumps(sweep)}  # no config: an older run
            dense = {k: v for k, v in flat.items() if _under(k, DENSE_DETERMINING)} if cfg else flat
            gk, dk = _key(flat), "d" + _key(dense)
            flats[gk], flats[dk] = flat, dense
            try:
                frames.append(pd.read_csv(summary).assign(run_dir=str(d), sweep=sweep, group_key=gk, dense_key=dk))
                continue
            except (ValueError, UnicodeDecodeError, OSError) as e:  # pandas' parser errors are ValueErrors
                meta = {"status": "failed", "error": f"unreadable summary.csv ({type(e).__name__})"}
        frames.append(pd.DataFrame([{
            "experiment": cfg.get("name"), "method": (cfg.get("method") or {}).get("name"),
            "model": (cfg.get("model") or {}).get("name"), "dataset": (cfg.get("dataset") or {}).get("name"),
            "seed": cfg.get("seed"), "budget": (cfg.get("budget") or {}).get("name"),
            "hardware": (cfg.get("hardware") or {}).get("name"), "status": meta.get("status", "failed"),
            "error": meta.get("error", ""), "run_dir": str(d), "sweep": sweep}]))
    if not frames:
        return pd.DataFrame(columns=SUMMARY_COLUMNS + ["run_dir"])
    df = pd.concat(frames, ignore_index=True)
    if "group_key" not in df:
        return df
    df["group"], df["dense_group"] = "", ""
    for _, sub in df[df.group_key.notna()].groupby(["experiment", "budget"], dropna=False):
        for col, key in (("group", "group_key"), ("dense_group", "dense_key")):
            names = group_labels({k: flats[k] for k in sub[key].unique()})
            df.loc[sub.index, col] = sub[key].map(names)
    df["counted"] = ~_repeats(df)
    return df


def _identity(df: pd.DataFrame) -> pd.DataFrame:
    """What makes a row one training: its configuration (the dense one for dense rows), seed and arm."""
    dense = df.variant == "dense"
    ident = pd.DataFrame({"key": df.dense_key.where(dense, df.group_key), "seed": df.seed,
                          "method": df.method.where(~dense, ""), "variant": df.variant, "round": df["round"]})
    for c in ROW_IDENTITY:
        if c in df:
            ident[c] = df[c].astype(str)
    return ident


# a finished row's status: "ok", "at_chance" (a real result — e.g. a network pruned to nothing —
# that the training loop flags) or "diverged" (an arm whose loss became NaN, recorded by a method that studies
# stability at the majority-class accuracy); kept in means and figures, and listed under the table
FINISHED = ("ok", "at_chance", "diverged")


def _repeats(df: pd.DataFrame) -> pd.Series:
    """True for a finished row whose training another run directory already holds (counted there)."""
    ok = df.status.isin(FINISHED) & df.group_key.notna()
    ident = _identity(df[ok])
    cols = list(ident.columns)
    first = ident.assign(run_dir=df.run_dir[ok]).drop_duplicates(cols).set_index(cols).run_dir
    owner = ident.join(first, on=cols).run_dir
    return pd.Series(False, index=df.index).mask(ok, owner != df.run_dir[ok])


def counted(df: pd.DataFrame) -> pd.DataFrame:
    """Finished rows, each training once (drops the repeats ``collect`` marked; other frames pass)."""
    ok = df[df.status.isin(FINISHED)] if "status" in df else df
    return ok[ok.counted.fillna(True).astype(bool)] if "counted" in ok else ok


def run_files(df: pd.DataFrame, name: str) -> pd.DataFrame:
    """``name`` (``metrics.jsonl`` or ``layers.csv``) of every run behind ``df``, with a ``run_dir`` column."""
    frames = []
    for run_dir in df.run_dir.dropna().unique() if "run_dir" in df else []:
        f = Path(run_dir) / name
        if f.exists():
            part = (pd.DataFrame([json.loads(line) for line in f.read_text().splitlines() if line.strip()])
                    if name.endswith(".jsonl") else pd.read_csv(f))
            frames.append(part.assign(run_dir=run_dir))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
