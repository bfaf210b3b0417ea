"""The claims scoreboard: verdicts, pairing by seed, intervals and run selection, on results directories built by
hand (run.json + config.yaml + summary.csv + .hydra/overrides.yaml, the documented files)."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from sparse_run.config import ConfigError
from sparse_run.report import claims, gallery, scoreboard
from sparse_run.report.sweep import main as report_main

CLAIM = {"name": "ticket_beats_dense", "statement": "tickets beat dense", "source": "Fig. 3", "paper_value": 0.3,
         "measure": "ticket − dense (pp)", "a": {"variant": "ticket", "target_density": {"near": 0.135}},
         "b": {"variant": "dense"}, "scale": 100, "expect": "> 0"}


def _claim(**changes) -> claims.Claim:
    return claims.make_claim("lottery_mnist", {**CLAIM, **changes}, "claims[0]")


def _run(root: Path, name: str, rows: list[dict], *, experiment="lottery_mnist", budget="quick",
         overrides=(), status="complete") -> Path:
    d = root / experiment / name
    (d / ".hydra").mkdir(parents=True)
    (d / "run.json").write_text(json.dumps({"status": status}))
    (d / "config.yaml").write_text(yaml.safe_dump({"name": experiment, "budget": {"name": budget}}))
    (d / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"budget={budget}", *overrides]))
    pd.DataFrame(rows).to_csv(d / "summary.csv", index=False)
    return d


def _lottery_rows(seed: int, dense: float, ticket: float, density: float = 0.1352) -> list[dict]:
    base = {"experiment": "lottery_mnist", "seed": seed, "status": "ok"}
    return [{**base, "variant": "dense", "round": 0, "target_density": 1.0, "density": 1.0,
             "test_acc_at_early_stop": dense},
            {**base, "variant": "ticket", "round": 8, "target_density": 0.1688, "density": 0.1688,
             "test_acc_at_early_stop": 0.5},
            {**base, "variant": "ticket", "round": 9, "target_density": density, "density": density,
             "test_acc_at_early_stop": ticket}]


def _score(root: Path, claim: claims.Claim) -> claims.Score:
    (score,) = [s for s in claims.evaluate(root, [claim]) if s.budget == "quick"]
    return score


def test_reproduced_when_every_paired_difference_is_positive(tmp_path):
    for seed, (dense, ticket) in enumerate([(0.90, 0.9050), (0.95, 0.9551), (0.99, 0.9949)]):
        _run(tmp_path, f"budget=quick,seed={seed}", _lottery_rows(seed, dense, ticket))
    s = _score(tmp_path, _claim())
    assert s.n == 3 and s.seeds == [0, 1, 2]
    assert s.per_seed == pytest.approx([0.5, 0.51, 0.49])
    assert s.mean == pytest.approx(0.5)
    half = 4.302653 * 0.01 / math.sqrt(3)  # t(0.975, 2 df) · sd / √n
    assert (s.lo, s.hi) == pytest.approx((0.5 - half, 0.5 + half), rel=1e-5)
    assert s.verdict == "reproduced" and s.interval.startswith("t")
    assert s.at == "13.5 % weights"


def test_pairs_by_seed_inside_a_run_not_by_row_order(tmp_path):
    """Three seeds in one run (replicates), rows shuffled: A − B is taken per seed. Unpaired means would give
    the same mean, but a spread of 5 pp; paired, every difference is exactly +1 pp (a zero-width interval)."""
    rows = []
    for seed, dense in enumerate([0.90, 0.95, 0.99]):
        rows += _lottery_rows(seed, dense, dense + 0.01)
    rows = rows[::-1]
    _run(tmp_path, "budget=quick,train.replicates=3", rows)
    s = _score(tmp_path, _claim())
    assert s.per_seed == pytest.approx([1.0, 1.0, 1.0])
    assert s.lo == pytest.approx(1.0) and s.hi == pytest.approx(1.0)
    assert s.verdict == "reproduced"


def test_not_reproduced_and_inconclusive(tmp_path):
    for seed in range(3):
        _run(tmp_path / "neg", f"budget=quick,seed={seed}", _lottery_rows(seed, 0.95, 0.94 + 0.001 * seed))
        _run(tmp_path / "mixed", f"budget=quick,seed={seed}", _lottery_rows(seed, 0.95, [0.96, 0.94, 0.951][seed]))
    assert _score(tmp_path / "neg", _claim()).verdict == "not reproduced"
    assert _score(tmp_path / "mixed", _claim()).verdict == "inconclusive"


def test_one_seed_has_no_interval_and_is_inconclusive(tmp_path):
    _run(tmp_path, "budget=quick,seed=0", _lottery_rows(0, 0.95, 0.96))
    s = _score(tmp_path, _claim())
    assert s.n == 1 and s.lo is None and s.hi is None
    assert scoreboard.ours(s) == "1"  # no bracket
    assert s.verdict == "inconclusive" and "n = 1 < 3" in s.detail


def test_not_run_when_no_run_or_no_matching_level(tmp_path):
    (score,) = claims.evaluate(tmp_path, [_claim()])
    assert score.verdict == "not run" and score.n == 0 and score.budget == "—"
    scores = claims.evaluate(tmp_path, [_claim()], budgets=["quick", "paper"])
    assert [(s.budget, s.verdict) for s in scores] == [("quick", "not run"), ("paper", "not run")]
    _run(tmp_path, "budget=quick,seed=0", _lottery_rows(0, 0.95, 0.96))
    s = _score(tmp_path, _claim(a={"variant": "ticket", "target_density": {"near": 0.02}}))  # 0.135 > 1.5 × 0.02
    assert s.verdict == "not run" and "arm A" in s.detail


def test_runs_with_other_overrides_or_unfinished_do_not_count(tmp_path):
    for seed in range(3):
        _run(tmp_path, f"budget=quick,seed={seed}", _lottery_rows(seed, 0.95, 0.96))
    _run(tmp_path, "budget=quick,hardware=cpu_sparse,seed=3", _lottery_rows(3, 0.95, 0.90),
         overrides=["hardware=cpu_sparse", "seed=3", "threads=1"])
    _run(tmp_path, "budget=quick,seed=4", _lottery_rows(4, 0.95, 0.90), status="running")
    s = _score(tmp_path, _claim())
    assert s.seeds == [0, 1, 2]
    s = _score(tmp_path, _claim(overrides=["hardware=cpu_sparse"]))
    assert s.seeds == [3]


def test_boolean_overrides_match_however_they_are_spelled(tmp_path):
    """A sweep records ``dense=False`` (Python's spelling), a claim says ``dense=false`` (YAML's)."""
    _run(tmp_path, "budget=quick,method.schedule.dense=False,seed=0", _lottery_rows(0, 0.95, 0.96),
         overrides=["method.schedule.dense=False", "seed=0"])
    assert _score(tmp_path, _claim(overrides=["method.schedule.dense=false"])).seeds == [0]
    assert _score(tmp_path, _claim(overrides=["method.schedule.dense=true"])).seeds == []


def test_unit_run_averages_each_arm_within_a_run_and_replicates_runs(tmp_path):
    """A search's retrain seeds share its masks: with unit run they are averaged, one value per run."""
    for run_seed, (best, rand) in enumerate([((0.90, 0.92), (0.89, 0.89)), ((0.80, 0.84), (0.81, 0.79))]):
        rows = [{"seed": 1000 * (run_seed + 1) + j, "status": "ok", "variant": v, "test_acc": acc}
                for v, accs in (("rs_best", best), ("random_mask", rand)) for j, acc in enumerate(accs)]
        d = _run(tmp_path, f"budget=quick,seed={run_seed}", rows, experiment="random_search_mnist")
        (d / "config.yaml").write_text(yaml.safe_dump({"name": "random_search_mnist", "seed": run_seed,
                                                       "budget": {"name": "quick"}}))
    raw = {**CLAIM, "metric": "test_acc", "a": {"variant": "rs_best"}, "b": {"variant": "random_mask"}, "min_n": 2}
    by_run = _score(tmp_path, claims.make_claim("random_search_mnist", {**raw, "unit": "run"}, "c"))
    assert by_run.seeds == [0, 1] and by_run.per_seed == pytest.approx([2.0, 2.0])
    by_seed = _score(tmp_path, claims.make_claim("random_search_mnist", raw, "c"))
    assert by_seed.n == 4
    with pytest.raises(ConfigError, match=r"^c.unit: got 'search'; allowed: seed, run"):
        claims.make_claim("random_search_mnist", {**raw, "unit": "search"}, "c")


def test_ratio_and_value_and_nearest_level(tmp_path):
    base = {"seed": 0, "status": "ok"}
    rows = [{**base, "variant": "ste", "pattern": "2:4", "sad_late": 100.0},
            {**base, "variant": "srste", "pattern": "2:4", "sad_late": 25.0},
            {**base, "method": "synflow", "target_density": 0.0031623, "rank": 2},
            {**base, "method": "synflow", "target_density": 0.01, "rank": 5}]
    _run(tmp_path, "budget=quick,seed=0", rows, experiment="nm_mnist")
    ratio = claims.make_claim("nm_mnist", {**CLAIM, "quantity": "ratio", "metric": "sad_late", "scale": 1,
                                           "a": {"variant": "srste", "pattern": "2:4"},
                                           "b": {"variant": "ste", "pattern": "2:*"}}, "c")
    assert _score(tmp_path, ratio).per_seed == [0.25]
    rank = claims.make_claim("nm_mnist", {**CLAIM, "quantity": "value", "metric": "rank", "scale": 1, "b": {},
                                          "a": {"method": "synflow", "target_density": {"near": 0.00316}}}, "c")
    assert _score(tmp_path, rank).per_seed == [2.0]


def test_correlation_pools_rows_with_a_fisher_interval(tmp_path):
    for seed in range(2):
        rows = [{"seed": seed, "status": "ok", "model_arm": "gru", "graph_sources": k,
                 "test_acc": 0.5 + 0.02 * k + 0.01 * ((k * 7 + seed) % 3)} for k in range(8)]
        _run(tmp_path, f"budget=quick,seed={seed}", rows, experiment="rnn_random_graph_reber")
    c = claims.make_claim("rnn_random_graph_reber", {**CLAIM, "quantity": "corr", "metric": "test_acc",
                                                     "x": "graph_sources", "a": {"model_arm": "gru"}, "b": {},
                                                     "scale": 1, "min_n": 10}, "c")
    s = _score(tmp_path, c)
    df = pd.concat(pd.read_csv(p) for p in sorted(tmp_path.rglob("summary.csv")))
    r = df.graph_sources.corr(df.test_acc)
    z, half = math.atanh(r), 1.959964 / math.sqrt(16 - 3)
    assert s.n == 16 and s.seeds == [0, 1]
    assert s.mean == pytest.approx(r)
    assert (s.lo, s.hi) == pytest.approx((math.tanh(z - half), math.tanh(z + half)), rel=1e-5)
    assert s.verdict == "reproduced"


@pytest.mark.parametrize("expect,lo,hi,verdict", [
    ("> 0", 0.1, 0.2, "reproduced"), ("> 0", -0.1, 0.2, "inconclusive"), ("> 0", -0.2, 0.0, "not reproduced"),
    ("< 1", 0.5, 0.9, "reproduced"), ("<= 2", 2.0, 2.5, "inconclusive"), (">= -0.56", -0.5, 0.3, "reproduced"),
    ("in [-0.5, 0.5]", -0.2, 0.3, "reproduced"), ("in [-0.5, 0.5]", -0.7, 0.3, "inconclusive"),
    ("in [-0.5, 0.5]", 0.6, 0.9, "not reproduced"),
])
def test_verdict_from_interval(expect, lo, hi, verdict):
    assert claims.verdict(expect, lo, hi) == verdict


@pytest.mark.parametrize("change,field", [
    ({"expect": "bigger"}, "claims[0].expect"), ({"quantity": "mean"}, "claims[0].quantity"),
    ({"b": {}}, "claims[0].b"), ({"a": {}}, "claims[0].a"), ({"scale": "x"}, "claims[0].scale"),
    ({"table": "../../elsewhere.csv"}, "claims[0].table"),
])
def test_bad_claims_are_one_line_errors_naming_the_field(change, field):
    with pytest.raises(ConfigError) as e:
        _claim(**change)
    assert e.value.field == field and "\n" not in str(e.value)


def test_shipped_claims_load_and_name_their_sources():
    shipped = claims.load_claims()
    experiments = {c.experiment for c in shipped}
    assert {"lottery_mnist", "gmp_mnist", "pai_mnist", "nm_mnist", "rnn_prune_reber"} <= experiments
    assert all(c.source and c.measure and c.statement for c in shipped)


def test_report_cli_writes_the_scoreboard_files(tmp_path, monkeypatch, capsys):
    for seed in range(3):
        _run(tmp_path, f"budget=quick,seed={seed}", _lottery_rows(seed, 0.95, 0.96 + 0.001 * seed))
    monkeypatch.setattr(sys, "argv", ["sparse-run-report", "--claims", str(tmp_path)])
    report_main()
    out = capsys.readouterr().out
    assert "ticket_above_dense_13.5" in out and "not run" in out  # the other experiments' claims are listed
    table = pd.read_csv(tmp_path / "claims" / "claims.csv")
    row = table[(table.claim == "ticket_above_dense_13.5") & (table.budget == "quick")].iloc[0]
    assert row.verdict == "reproduced" and row.n == 3
    assert json.loads((tmp_path / "claims" / "claims.json").read_text())[0]["verdict"] in claims.VERDICTS
    assert "| verdict |" in (tmp_path / "claims" / "claims.md").read_text()


def test_gallery_page_lists_every_claim_and_marks_smoke(tmp_path):
    for seed in range(3):
        _run(tmp_path / "paper" / "lth", f"budget=smoke,seed={seed}",
             _lottery_rows(seed, 0.95, 0.96), budget="smoke")
    items = [gallery.Entry(name="lth", experiment="lottery_mnist", paper="LTH figure", seeds=[0, 1, 2])]
    scores = claims.evaluate(tmp_path / "paper", budgets=["smoke"])
    page = gallery.build(tmp_path, items, scores, "smoke").read_text()
    assert "mean nothing" in page and "ticket_above_dense_13.5" in page
    assert "3 runs" in page and "Paper: LTH figure" in page
    assert (tmp_path / "figures" / "lth_smoke.csv").exists() is False  # no sweep report was made
    assert (tmp_path / "claims.csv").exists()


def test_arm_b_may_read_another_column(tmp_path):
    """Accuracy right after pruning (A) against the dense model's accuracy (B, which has no 'before' value)."""
    rows = [{"seed": s, "status": "ok", "variant": v, "test_acc": t, "test_acc_before_finetune": b}
            for s in range(3) for v, t, b in (("dense", 1.0, None), ("sparse", 0.9, 0.5 + 0.01 * s))]
    _run(tmp_path, "budget=quick,train.replicates=3", rows)
    c = _claim(metric="test_acc_before_finetune", metric_b="test_acc", a={"variant": "sparse"})
    assert _score(tmp_path, c).per_seed == pytest.approx([-50.0, -49.0, -48.0])
    assert _score(tmp_path, _claim(metric="test_acc_before_finetune", a={"variant": "sparse"})).verdict == "not run"


def test_side_by_side_has_one_row_per_claim_and_a_column_pair_per_budget(tmp_path):
    for seed in range(3):
        _run(tmp_path, f"budget=quick,seed={seed}", _lottery_rows(seed, 0.95, 0.96 + 0.001 * seed))
        _run(tmp_path, f"budget=paper,seed={seed}", _lottery_rows(seed, 0.95, 0.94), budget="paper")
    other = _claim(name="second")
    table = scoreboard.side_by_side(claims.evaluate(tmp_path, [_claim(), other]), {"lottery_mnist": "#lth"})
    lines = table.strip().splitlines()
    assert lines[0] == "| claim | paper | quick: ours | quick: verdict | paper: ours | paper: verdict |"
    assert len(lines) == 4 and all(line.count("|") == 7 for line in lines)
    assert "[`lottery_mnist`](#lth) ticket_beats_dense" in lines[2]
    assert "| reproduced |" in lines[2] and lines[2].endswith("| not reproduced |")


def test_a_gallery_entry_lists_only_the_claims_scored_on_its_own_runs():
    plain = claims.Score(_claim(name="plain"), "quick", n=3, mean=1.0, lo=0.5, hi=1.5, verdict="reproduced")
    swept = claims.Score(_claim(name="swept", overrides=["method.schedule.dense=false"]), "quick", n=3, mean=2.0,
                         lo=1.0, hi=3.0, verdict="reproduced")
    assert "plain" in gallery._we_see([plain, swept], "lottery_mnist", "quick")
    assert "swept" not in gallery._we_see([plain, swept], "lottery_mnist", "quick")
    only = gallery._we_see([plain, swept], "lottery_mnist", "quick", ["method.schedule.dense=False"])
    assert "swept" in only and "plain" not in only
    assert gallery._we_see([plain], "lottery_mnist", "quick", ["hardware=cpu_sparse"]).startswith("no claims")
