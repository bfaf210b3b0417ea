"""Reports and the console table: which runs are pooled, how lines are named, what is counted.

Most tests build small results directories by hand (config.yaml + run.json + summary.csv, the
documented schema) so they run in a second; one runs a real two-rate sweep end to end.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import matplotlib.collections
import pandas as pd
import yaml

from conftest import run_cli
from sparse_run import report
from sparse_run.report import collect, figures, sweep, tables
from sparse_run.store.schema import SUMMARY_COLUMNS, rows_to_csv

BASE_CFG = {
    "model": {"name": "lenet_300_100", "arch": "mlp", "hidden": [300, 100], "width": 1.0},
    "dataset": {"name": "mnist", "root": None, "download": True, "val_size": 5000},
    "method": {"name": "imp", "criterion": "magnitude",
               "schedule": {"kind": "iterative", "rounds": 2, "rate": 0.2, "rewind": "init", "rewind_step": 0},
               "controls": {"variants": ["reinit"], "rounds": [2]}},
    "hardware": {"name": "cpu", "execution": "dense"},
    "train": {"optimizer": "adam", "lr": 0.0012, "batch_size": 60, "steps": 200, "checkpoint_every": 100,
              "replicates": 1},
    "budget": {"name": "smoke", "train_subset": 3000, "eval_subset": 1000},
    "logger": {"kind": "csv"},
    "paths": {"results_dir": "/somewhere", "data_dir": "/data"},
    "name": "lottery_mnist", "seed": 0, "device": "cpu", "threads": 1, "progress": True, "cache": True,
}


def _set(cfg: dict, dotted: str, value) -> None:
    *head, last = dotted.split(".")
    for k in head:
        cfg = cfg[k]
    cfg[last] = value


def make_run(root: Path, name: str, overrides: dict, rows: list[dict], seed: int = 0) -> Path:
    """A finished run directory: effective config (BASE_CFG + overrides), run.json, summary.csv."""
    cfg = copy.deepcopy(BASE_CFG)
    for k, v in {**overrides, "seed": seed}.items():
        _set(cfg, k, v)
    d = root / "lottery_mnist" / name
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    (d / "run.json").write_text(json.dumps({"status": "complete", "config_hash": f"h-{name}"}))
    base = {"experiment": "lottery_mnist", "method": "imp", "model": "lenet_300_100", "dataset": "mnist",
            "seed": seed, "budget": "smoke", "hardware": "cpu", "early_stop_step": 200, "steps": 200,
            "wall_s": 0.1, "status": "ok", "val_acc": 0.9}
    full = [{**base, "target_density": r["density"], "test_acc_at_early_stop": r["test_acc"], **r} for r in rows]
    (d / "summary.csv").write_text(rows_to_csv(full, SUMMARY_COLUMNS))
    return d


def imp_rows(rate: float, dense_acc: float = 0.91, ticket_acc: float = 0.92, rounds: int = 2) -> list[dict]:
    rows = [{"round": 0, "variant": "dense", "density": 1.0, "test_acc": dense_acc}]
    for r in range(1, rounds + 1):
        rows.append({"round": r, "variant": "ticket", "density": round((1 - rate) ** r, 6), "test_acc": ticket_acc})
    return rows


def sidecar(root: Path) -> dict:
    return json.loads((root / "lottery_mnist" / "report" / "figures"
                       / "lottery_mnist_smoke_accuracy_vs_density.json").read_text())


def test_report_draws_a_rate_sweep_as_one_line_per_rate_labelled_by_rate(tmp_path):
    for rate in (0.2, 0.5):
        make_run(tmp_path, f"rate={rate}", {"method.schedule.rate": rate}, imp_rows(rate))
    df = report.report(tmp_path / "lottery_mnist", quiet=True)
    assert set(df.group) == {"method.schedule.rate=0.2", "method.schedule.rate=0.5"}
    lines = sidecar(tmp_path)["lines"]
    assert "winning ticket (rewind) [method.schedule.rate=0.2] (n=1)" in lines
    assert "winning ticket (rewind) [method.schedule.rate=0.5] (n=1)" in lines
    agg = tables.aggregate(df)
    assert len(agg[agg.variant == "ticket"]) == 4  # 2 rates × 2 rounds, none averaged across rates


def test_report_keeps_rewind_step_and_rewind_init_apart(tmp_path):
    make_run(tmp_path, "a", {}, imp_rows(0.2, ticket_acc=0.90))
    make_run(tmp_path, "b", {"method.schedule.rewind": "step", "method.schedule.rewind_step": 500},
             imp_rows(0.2, ticket_acc=0.96))
    df = report.report(tmp_path / "lottery_mnist", quiet=True)
    agg = tables.aggregate(df)
    tickets = agg[agg.variant == "ticket"]
    assert sorted(tickets.acc_es.round(3)) == [0.90, 0.90, 0.96, 0.96]  # never their 0.93 average
    assert (tickets.seeds == 1).all()
    lines = sidecar(tmp_path)["lines"]
    assert any("method.schedule.rewind=init" in x and "method.schedule.rewind_step=0" in x for x in lines)
    assert any("method.schedule.rewind=step" in x and "method.schedule.rewind_step=500" in x for x in lines)


def test_report_counts_a_cached_dense_stage_shared_by_two_jobs_once(tmp_path):
    for seed in (0, 1):  # two rates × two seeds: two dense trainings, each reused by both rates
        for rate in (0.2, 0.5):
            make_run(tmp_path, f"rate={rate},seed={seed}", {"method.schedule.rate": rate},
                     imp_rows(rate, dense_acc=0.90 + 0.02 * seed), seed=seed)
    df = report.report(tmp_path / "lottery_mnist", quiet=True)
    dense = df[df.variant == "dense"]
    assert len(dense) == 4 and dense.counted.sum() == 2
    assert sorted(dense[dense.counted].seed) == [0, 1]
    agg = tables.aggregate(df)
    assert agg[agg.variant == "dense"].seeds.tolist() == [2]
    assert "dense (n=2)" in sidecar(tmp_path)["lines"]
    assert "2 row(s) repeat a training" in (tmp_path / "lottery_mnist" / "report" / "table.txt").read_text()


def test_report_pools_seeds_across_paths_threads_and_logger_but_not_lr(tmp_path):
    make_run(tmp_path, "s0", {}, imp_rows(0.2), seed=0)
    make_run(tmp_path, "s1", {"paths.results_dir": "/elsewhere", "threads": 4, "logger.kind": "wandb",
                              "train.checkpoint_every": 7}, imp_rows(0.2), seed=1)
    make_run(tmp_path, "lr", {"train.lr": 0.01}, imp_rows(0.2), seed=0)
    df = collect.collect(tmp_path / "lottery_mnist")
    groups = df.groupby("run_dir").group.first()
    assert groups[groups.index.str.endswith("s0")].iloc[0] == groups[groups.index.str.endswith("s1")].iloc[0]
    assert set(df.group) == {"train.lr=0.0012", "train.lr=0.01"}
    assert set(df.dense_group) == {"train.lr=0.0012", "train.lr=0.01"}  # a different lr is a different dense model
    assert df.counted.all()


def test_report_shows_no_spread_for_a_single_seed(tmp_path, monkeypatch):
    figs = []
    monkeypatch.setattr(figures, "save_figure", lambda fig, out, meta: figs.append(fig) or Path(out))

    def spreads() -> tuple[str, int]:
        df = collect.collect(tmp_path / "lottery_mnist")
        sweep.report_figures(collect.counted(df), tmp_path / "figs")
        ax = figs[-1].axes[0]  # accuracy panel: bands are PolyCollections, the dense ±std an axhspan patch
        bands = [c for c in ax.collections if isinstance(c, matplotlib.collections.PolyCollection)]
        return tables.format_table(tables.aggregate(df)), len(bands) + len(ax.patches)

    make_run(tmp_path, "one", {}, imp_rows(0.2))
    table, n_spread = spreads()
    assert "±" not in table and "92.00" in table and n_spread == 0
    make_run(tmp_path, "two", {}, imp_rows(0.2, dense_acc=0.93, ticket_acc=0.94), seed=1)  # a second seed
    table, n_spread = spreads()
    assert "93.00 ± 1.00" in table and n_spread == 2  # ticket band + dense band


def test_report_says_which_points_at_zero_density_it_could_not_draw(tmp_path, capsys):
    rows = imp_rows(0.5) + [{"round": 3, "variant": "ticket", "density": 0.0, "test_acc": 0.1}]
    make_run(tmp_path, "all", {"method.schedule.rounds": 3, "method.schedule.rate": 0.5}, rows)
    report.report(tmp_path / "lottery_mnist", quiet=True)
    meta = sidecar(tmp_path)
    assert meta["not_drawn"] == ["winning ticket (rewind) at 0 % (n=1)"]
    assert "not drawn" in capsys.readouterr().out
    assert (tmp_path / "lottery_mnist" / "report" / "figures" / "lottery_mnist_smoke_accuracy_vs_density.png").exists()


def test_console_table_names_method_and_seed_and_the_matched_level_of_small_dense_rows():
    rows = []
    for seed in (0, 1):
        rows.append({"method": "pai", "seed": seed, "round": 0, "variant": "dense", "target_density": 1.0,
                     "density": 1.0, "test_acc": 0.9, "nnz_params": 266610})
        for method in ("random", "snip"):
            rows.append({"method": method, "seed": seed, "round": 1, "variant": "sparse", "target_density": 0.1,
                         "density": 0.1, "test_acc": 0.8, "nnz_params": 27000})
        rows.append({"method": "pai", "seed": seed, "round": 1, "variant": "small_dense", "target_density": 0.1,
                     "density": 1.0, "test_acc": 0.5, "nnz_params": 27100, "width": 0.115})
    table = report.console_table(pd.DataFrame(rows))
    lines = table.splitlines()
    header = lines[0].split()
    assert {"method", "seed", "nnz", "width"} <= set(header)
    body = [ln.split() for ln in lines[1:] if ln.strip() and not ln.startswith("(")]
    assert len(body) == 8 and len({tuple(r[:4]) for r in body}) == 8  # every row named by what distinguishes it
    small = [r for r in body if "small_dense" in r]
    density = header.index("density")  # "density %" splits in two: the value sits under "density"
    assert {r[density] for r in small} == {"10.0"}
    assert all(("snip" in ln) or ("random" in ln) or ("pai" in ln) for ln in lines[1:9])


def test_console_table_shows_seed_for_replicates_and_nothing_extra_for_one_run():
    one = pd.DataFrame([{"method": "imp", "seed": 0, "round": r, "variant": "ticket", "density": 0.8 ** r,
                         "test_acc": 0.9} for r in range(3)])
    assert report.console_table(one).split()[:2] == ["round", "variant"]
    three = pd.concat([one.assign(seed=s) for s in range(3)], ignore_index=True)
    assert report.console_table(three).split()[0] == "seed"


def test_multirun_rate_sweep_figure_has_a_line_per_rate_and_one_dense_model(tmp_path):
    run_cli("--multirun", "experiment=lottery_mnist", "budget=smoke", "method.schedule.rate=0.2,0.5", "threads=1",
            f"paths.results_dir={tmp_path}")
    meta = sidecar(tmp_path)
    assert meta["groups"] == ["method.schedule.rate=0.2", "method.schedule.rate=0.5"]
    lines = meta["lines"]
    assert lines[0] == "dense (n=1)"  # the dense stage both jobs share, counted once
    for rate in (0.2, 0.5):
        assert f"winning ticket (rewind) [method.schedule.rate={rate}] (n=1)" in lines
        assert f"random reinit (same mask) [method.schedule.rate={rate}] (n=1)" in lines
    table = (tmp_path / "lottery_mnist" / "report" / "table.txt").read_text()
    assert "±" not in table and "method.schedule.rate=0.5" in table


def test_single_run_figure_names_no_group(tmp_path):
    d = make_run(tmp_path, "one", {"method.schedule.rate": 0.2}, imp_rows(0.2))
    made = report.run_figures(d)
    meta = json.loads(made[0].with_suffix(".json").read_text())
    assert meta["lines"] == ["dense (n=1)", "winning ticket (rewind) (n=1)"]


def test_report_keeps_rows_that_ended_at_chance_in_means_and_lists_them(tmp_path):
    """An arm flagged ``at_chance`` (e.g. a network pruned to nothing) is a result, not a failure."""
    rows = imp_rows(0.2, ticket_acc=0.92)
    rows[-1] = {**rows[-1], "test_acc": 0.1, "status": "at_chance"}
    make_run(tmp_path, "a", {}, rows)
    df = report.report(tmp_path / "lottery_mnist", quiet=True)
    agg = tables.aggregate(df)
    last = agg[(agg.variant == "ticket") & (agg["round"] == 2)]
    assert len(last) == 1 and abs(float(last.final_acc.iloc[0]) - 0.1) < 1e-9
    text = (tmp_path / "lottery_mnist" / "report" / "table.txt").read_text()
    assert "1 row(s) ended at chance" in text and "not complete" not in text


def test_console_table_shows_status_when_a_row_ended_at_chance():
    df = pd.DataFrame({"round": [0, 1], "variant": ["dense", "ticket"], "density": [1.0, 0.01],
                       "test_acc": [0.97, 0.1], "test_acc_at_early_stop": [0.97, 0.1], "early_stop_step": [10, 10],
                       "wall_s": [0.1, 0.1], "status": ["ok", "at_chance"]})
    out = report.console_table(df)
    assert "status" in out.splitlines()[0] and "at_chance" in out
    assert "status" not in report.console_table(df.assign(status="ok"))


def test_report_lists_a_run_with_corrupt_files_and_reports_the_rest(tmp_path):
    good = make_run(tmp_path, "good", {}, imp_rows(0.2))
    bad = make_run(tmp_path, "bad", {"method.schedule.rate": 0.5}, imp_rows(0.5))
    (bad / "run.json").write_bytes(b"\x00{garbage")
    worse = make_run(tmp_path, "worse", {"method.schedule.rate": 0.7}, imp_rows(0.7))
    (worse / "summary.csv").write_bytes(b"\xff\xfe\x00binary")
    df = report.report(tmp_path / "lottery_mnist", quiet=True)
    assert set(df[df.status == "ok"].run_dir) == {str(good)}
    text = (tmp_path / "lottery_mnist" / "report" / "table.txt").read_text()
    assert "unreadable run.json" in text and "unreadable summary.csv" in text
