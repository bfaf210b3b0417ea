"""Parameter sharing against pruning end to end: ``experiment=rps_mnist budget=smoke`` (three compressions) writes
every arm at exactly the trained-parameter count it reports, the accounting columns and the figures; bad settings
are one line naming their field before any work."""
from __future__ import annotations

import pandas as pd
import pytest

from conftest import compose_cfg, run_cli, sigkill_inside
from sparse_run.config import ConfigError
from sparse_run.execute import effective

LEVELS = "method.schedule.compressions=[1,10,100]"


@pytest.fixture(scope="module")
def rps_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("rps")
    run_cli("experiment=rps_mnist", "budget=smoke", "threads=1", "progress=false", LEVELS,
            "method.schedule.rounds=2", "method.schedule.rate=0.9", f"paths.results_dir={root}")
    return next((root / "rps_mnist").iterdir())


def test_rps_smoke_trains_every_arm_at_its_parameter_count(rps_run):
    s = pd.read_csv(rps_run / "summary.csv")
    rps = s[s.variant.isin(["stable_rps", "roast", "hashed_net"])]
    assert len(rps) == 9 and set(rps.mapper) == {"random_fold", "roast", "hashed_net"}
    n = 784 * 300 + 300 * 100 + 100 * 10
    assert (rps.shareable if "shareable" in rps else rps.prunable).eq(n).all()
    assert (rps.shared_params == (n / rps.target_compression).round()).all()
    assert (rps.trained_params == rps.shared_params + 300 + 100 + 10).all()  # z plus the unshared biases
    assert (rps.unshared_params == 410).all() and (rps.nnz_params == rps.trained_params).all()
    assert (rps[rps.variant == "stable_rps"].grad_scale_rule.str.startswith("c_j = sum of s^2")).all()
    assert (rps[rps.variant != "stable_rps"].grad_scale_rule == "none").all()
    at1 = rps[rps.target_compression == 1].set_index("variant").unused_slots
    assert at1["stable_rps"] == 0 and at1["hashed_net"] == pytest.approx(0.368, abs=0.01)
    crit = s[s.variant == "sparse"]
    assert set(crit.method) == {"random", "magnitude", "snip", "grasp", "synflow"}
    assert set(crit.target_compression) == {10, 100}  # at 1x pruning is the dense model
    for c in (10, 100):  # pruning keeps as many shareable weights as RPS trains
        assert (crit[crit.target_compression == c].nonzeros == round(n / c)).all()
    assert (crit.trained_params == n + 410).all()  # a pruned model still trains (and stores) every weight
    assert set(s[s.variant == "ticket"].method) == {"ltr"} and len(s[s.variant == "ticket"]) == 2
    assert {"dense", "small_dense"} <= set(s.variant)
    assert (rps_run / "figures" / "rps_accuracy.png").stat().st_size > 10_000


@pytest.mark.parametrize("override, message", [
    ("method.schedule.compressions=[0.5,10]", r"^method.schedule.compressions\[0\]: got 0.5"),
    ("method.schedule.compressions=[]", r"^method.schedule.compressions: got \[\]"),
    ("method.schedule.variants=[stable_rps,cuckoo]", r"^method.schedule.variants\[1\]: got 'cuckoo'.*stable_rps"),
    ("method.schedule.init_stds=[0]", r"^method.schedule.init_stds\[0\]: got 0"),
    ("method.policy.layers=[linear,rnn]", r"^method.policy.layers\[1\] \(schedule.kind=sharing shares\): got 'rnn'"),
    ("method.schedule.rewind_step=99999", r"^method.schedule.rewind_step: got 99999"),
], ids=["compression_below_one", "no_levels", "unknown_arm", "zero_std", "rnn_layers", "rewind_beyond_training"])
def test_bad_sharing_settings_are_one_line_errors(override, message):
    with pytest.raises(ConfigError, match=message) as err:
        effective(compose_cfg("experiment=rps_mnist", override), explicit=[override.split("=")[0]])
    assert "\n" not in str(err.value)


def test_a_diverging_arm_is_recorded_as_a_result_and_gradient_scaling_prevents_it(tmp_path):
    """SGD on z without gradient scaling at z std 0.004 (s ≈ 5–9) blows up; with it, the same arm trains."""
    run_cli("experiment=rps_mnist", "budget=smoke", "threads=1", "progress=false", "method.schedule.compressions=[10]",
            "method.schedule.init_stds=[0.004]", "method.schedule.variants=[stable_rps,stable_rps_nogs]",
            "method.criteria=null", "method.controls.variants=[]", "method.schedule.rounds=null",
            "method.schedule.dense=false", "train.optimizer=sgd", "train.lr=0.05", "train.momentum=0.9",
            f"paths.results_dir={tmp_path}")
    s = pd.read_csv(next((tmp_path / "rps_mnist").iterdir()) / "summary.csv").set_index("variant")
    assert s.status["stable_rps_nogs"] == "diverged" and "nan" in s.diverged_at["stable_rps_nogs"]
    assert s.test_acc["stable_rps_nogs"] == pytest.approx(0.1135, abs=0.02)  # the majority class's share
    assert s.status["stable_rps"] == "ok" and s.test_acc["stable_rps"] > 0.5


def test_sigkill_inside_a_shared_arm_then_rerun_equals_uninterrupted(tmp_path):
    """The in-flight checkpoint of an RPS arm holds z and the maps' constants: a killed run resumes bit for bit."""
    args = ["experiment=rps_mnist", "budget=smoke", "threads=1", "progress=false", "budget.steps_scale=0.012",
            "budget.evals=6", "method.schedule.compressions=[10]", "method.schedule.variants=[stable_rps,hashed_net]",
            "method.criteria=null", "method.controls.variants=[]", "method.schedule.rounds=null",
            "method.schedule.dense=false"]
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    run_cli(*args, f"paths.results_dir={ref}")
    target = sigkill_inside(args, killed, "rps_mnist", lambda arm: arm.startswith("hashed_net/"))  # the second arm
    assert "resuming" in run_cli(*args, f"paths.results_dir={killed}").stdout
    want = pd.read_csv(next((ref / "rps_mnist").iterdir()) / "summary.csv").drop(columns=["wall_s"])
    pd.testing.assert_frame_equal(want, pd.read_csv(target / "summary.csv").drop(columns=["wall_s"]))
