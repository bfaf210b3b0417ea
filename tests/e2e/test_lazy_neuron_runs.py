"""The Lazy Neuron study end to end: ``experiment=lazy_neuron_mnist budget=smoke`` trains every model arm under
every condition and the Top-k arms beside their ReLU baseline, probes activations at θ0 and over training, records
calibration and corrupted-input accuracy, and draws its figures; bad settings are one line naming their field."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from conftest import compose_cfg, run_cli
from sparse_run.config import ConfigError
from sparse_run.execute import effective


@pytest.mark.slow  # 22 arms, 2 min on a 2-core CI machine; the bad-input tests below stay in the fast suite
def test_lazy_neuron_smoke_runs_every_arm_with_the_probe(tmp_path):
    proc = run_cli("experiment=lazy_neuron_mnist", "budget=smoke", "threads=1", "progress=false",
                   f"paths.results_dir={tmp_path}")
    assert "at chance" not in proc.stderr  # random labels / noise inputs are expected to end at chance: no warning
    d = next((tmp_path / "lazy_neuron_mnist").iterdir())
    s = pd.read_csv(d / "summary.csv")
    models = {"vit_tiny", "mlp_128", "mlp_256", "mlp_512", "mlp_1024"}
    relu = s[s.variant == "relu"]
    for cond in ("clean", "random_labels", "noise_inputs"):
        assert set(relu[relu.condition == cond].model) == models
    assert set(s[s.condition == "label_noise"].variant) == {"relu", "top8", "top16", "top32"}
    assert len(s) == 15 + 3 + 4 and not s.duplicated(["model", "variant", "condition"]).any()
    assert (s.status == "ok").all() and (s.density == 1).all()
    # Top-k keeps exactly k of 256 per token, at θ0 and after training
    top = s[s.variant.str.startswith("top")]
    assert (top.act_nonzero_val == top.activation_k / 256).all() and (top.init_act_nonzero_val == top.activation_k / 256).all()
    # a ReLU layer starts near half on; arms of one architecture share θ0 (same validation probe reading at init)
    assert relu.init_act_nonzero_val.between(0.4, 0.6).all()
    assert relu.groupby("model").init_act_nonzero_val.nunique().eq(1).all()
    assert dict(zip(relu[relu.condition == "clean"].model, relu[relu.condition == "clean"].units)) == {
        "vit_tiny": 256, "mlp_128": 128, "mlp_256": 256, "mlp_512": 512, "mlp_1024": 1024}
    assert s.test_ece.between(0, 1).all() and s["test_acc_noise_1"].between(0, 1).all()
    assert (s[s.condition == "label_noise"].label_noise == 0.4).all()
    # the curves: one probe reading per evaluation, per ViT layer
    m = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
    vit = [r for r in m if r["model"] == "vit_tiny" and r["variant"] == "relu" and r["condition"] == "clean"]
    assert len(vit) == 2 and all(f"act_nonzero_val_blocks.{i}.act" in vit[-1] for i in range(4))
    for name in ("lazy_curves", "lazy_final", "lazy_topk"):
        assert (d / "figures" / f"{name}.png").stat().st_size > 10_000


@pytest.mark.parametrize("overrides, message", [
    (["method.schedule.topk=[256]"], r"^method.schedule.topk\[0\]: got 256; must be in \[1, 255\]"),
    (["method.schedule.topk=[0]"], r"^method.schedule.topk\[0\]: got 0; must be in \[1, 255\]"),
    (["method.schedule.conditions=[clean,shuffled]"], r"^method.schedule.conditions\[1\]: got 'shuffled'; allowed"),
    (["method.schedule.label_noise=1.0"], r"^method.schedule.label_noise: got 1.0; must be in \[0, 1\)"),
    (["train.probe_activations=0"], r"^train.probe_activations: got 0; lazy_neuron measures activation sparsity"),
    (["model=lenet5", "method.schedule.models=null", "method.schedule.topk=[]",
      "method.schedule.topk_conditions=[]"], r"^model.arch: got arch 'convfc' \(lenet5\); lazy_neuron probes MLP"),
    (["method.schedule.topk_conditions=[]"], r"^method.schedule.topk: got \[8, 16, 32\] with topk_conditions \[\]"),
    (["method.schedule.corruption_stds=[-1]"], r"^method.schedule.corruption_stds\[0\]: got -1"),
    (["method.schedule.ece_bins=0"], r"^method.schedule.ece_bins: got 0"),
    (["model.activation=gelu"], r"^model.activation: got 'gelu'; the Top-k arms are compared"),
], ids=["k_at_width", "k_zero", "unknown_condition", "all_labels_wrong", "probe_off", "not_an_mlp",
        "topk_without_conditions", "negative_corruption", "no_bins", "gelu_baseline"])
def test_bad_lazy_neuron_settings_are_one_line_errors(overrides, message):
    with pytest.raises(ConfigError, match=message) as err:
        effective(compose_cfg("experiment=lazy_neuron_mnist", *overrides), explicit=[o.split("=")[0] for o in overrides])
    assert "\n" not in str(err.value)
