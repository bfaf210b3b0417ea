"""Group sparsity end to end (``experiment=group_sparsity_mnist``): every selection arm prunes the same trained weights
to exact counts, the permuted arm keeps at least the unpermuted arm's Σ|W|, each fine-tuned arm is timed in its
pattern's execution, the figures are drawn; bad settings are one line naming their field."""
from __future__ import annotations

import pandas as pd
import pytest

from conftest import compose_cfg, run_cli
from sparse_run.config import ConfigError
from sparse_run.execute import effective


def test_group_sparsity_smoke_prunes_every_arm_exactly_and_times_it(tmp_path):
    run_cli("experiment=group_sparsity_mnist", "budget=smoke", "threads=1", "progress=false",
            "method.schedule.sparsities=[0.5]", "hardware.batch_sizes=[16]", f"paths.results_dir={tmp_path}")
    d = next((tmp_path / "group_sparsity_mnist").iterdir())
    s = pd.read_csv(d / "summary.csv")
    sparse = s[s.variant == "sparse"].set_index("method")
    assert list(sparse.index) == ["unstructured", "group4", "group4_perm", "group16", "group16_perm", "channel"]
    assert (sparse.drop(index="channel").density.round(9) == 0.5).all()  # exact counts (channel: whole rows)
    assert abs(sparse.loc["channel", "density"] - 0.5) < 0.01
    for g in (4, 16):
        assert sparse.loc[f"group{g}_perm", "retained_l1"] >= sparse.loc[f"group{g}", "retained_l1"]
    assert sparse.loc["unstructured", "retained_l1"] >= sparse.loc["group4", "retained_l1"]
    assert sparse.execution.tolist() == ["csr", "group", "group", "group", "group", "slim"]
    assert sparse.speedup_b16.gt(0).all() and sparse.verdict_b16.notna().all()
    lat = pd.read_csv(d / "latency.csv")
    assert set(lat[lat.scope == "model"].method) == set(sparse.index)
    layers = pd.read_csv(d / "layers.csv")
    groups = layers[(layers.method == "group16") & (layers.variant == "sparse")]
    assert groups.nonzeros.mod(16).eq(0).all()  # whole 16×1 groups
    for name in ("accuracy", "retained", "speedup"):
        assert (d / "figures" / f"{name}.png").stat().st_size > 10_000


@pytest.mark.parametrize("overrides, message", [
    (["method.schedule.selections=[{label: g3, pattern: group, group: 3}]"],
     r"^method.selection.group: got 3; allowed: 2, 4, 8, 16$"),
    (["model=lenet_300_100", "method.schedule.selections=[{label: g8, pattern: group, group: 8}]"], None),
    (["method.schedule.selections=[{label: p, pattern: unstructured, permute: true}]"],
     r"^method.selection.permute: got true with pattern=unstructured"),
    (["method.policy.prune_last=true"], r"^method.policy.prune_last: got true with selection.permute=true"),
    (["method.schedule.selections=[{label: a, pattern: nm}]"],
     r"^method.schedule.selections\[0\].pattern: got 'nm'; allowed: unstructured, group, channel, block$"),
    (["method.schedule.selections=[{label: a, pattern: group, size: 4}]"],
     r"^method.schedule.selections\[0\].size: unknown key; allowed: label, pattern, group, permute, block$"),
    (["model=resnet20", "dataset=synthetic_cifar10"], None),
], ids=["g_not_allowed", "g_not_dividing", "permute_unstructured", "permute_output_layer", "unknown_pattern",
        "unknown_key", "no_links"])
def test_bad_group_settings_are_one_line_errors(overrides, message, tmp_path):
    if message is None:  # found when the model exists: before the dense model trains
        proc = run_cli("experiment=group_sparsity_mnist", "budget=smoke", "threads=1", "progress=false",
                       "method.schedule.sparsities=[0.5]", *overrides, f"paths.results_dir={tmp_path}", check=False)
        assert proc.returncode != 0
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("error: method.selection."), last
        assert ("not a multiple of 8" in last) or ("cannot be permuted" in last), last
        assert not list(tmp_path.rglob("round_00.pt"))  # refused before the dense model trained
        return
    with pytest.raises(ConfigError, match=message) as err:
        effective(compose_cfg("experiment=group_sparsity_mnist", *overrides),
                  explicit=[o.split("=")[0] for o in overrides])
    assert "\n" not in str(err.value)


def test_oneshot_runs_group_pattern_with_permutation_on_the_group_target(tmp_path):
    proc = run_cli("experiment=gmp_mnist", "method=oneshot", "model=mlp_256_256", "budget=smoke", "threads=1",
                   "progress=false", "method.schedule.sparsities=[0.5]", "method.selection.permute=true",
                   "method.policy.prune_last=false", "hardware=cpu_group", "hardware.group=8",
                   "hardware.batch_sizes=[16]", f"paths.results_dir={tmp_path}")
    assert "needs 8x1 groups: method.selection.pattern unstructured -> group" in proc.stderr
    d = next((tmp_path / "gmp_mnist").iterdir())
    layers = pd.read_csv(d / "layers.csv")
    sparse = layers[layers.variant == "sparse"]
    assert (sparse.nonzeros * 2 == sparse.numel).all() and sparse.nonzeros.mod(8).eq(0).all()
    hw = pd.read_csv(d / "hardware.csv")
    assert set(hw.execution) == {"group"} and (hw[hw.scope == "layer"].status == "ok").all()


@pytest.mark.slow  # 1 min: a MobileNet trained at the smoke budget; the group permutation is unit-tested
def test_mobilenet_variant_permutes_pointwise_convs_through_batchnorm_and_depthwise(tmp_path):
    run_cli("experiment=group_sparsity_mobilenet_cifar10", "budget=smoke", "threads=1", "progress=false",
            "method.schedule.sparsities=[0.5]", "hardware.batch_sizes=[1]",
            "method.schedule.selections=[{label: group16_perm, pattern: group, group: 16, permute: true}]",
            f"paths.results_dir={tmp_path}")
    d = next((tmp_path / "group_sparsity_mobilenet_cifar10").iterdir())
    s = pd.read_csv(d / "summary.csv")
    row = s[s.method == "group16_perm"].iloc[0]
    assert row.dataset == "synthetic_cifar10" and row.execution == "group"  # no CIFAR-10 here: the stand-in
    layers = pd.read_csv(d / "layers.csv")
    sparse = layers[layers.variant == "sparse"]
    assert set(sparse.layer) == {f"blocks.{i}.pw.weight" for i in range(5)}  # stem and depthwise convs stay dense
    assert (sparse.nonzeros * 2 == sparse.numel).all()
    lat = pd.read_csv(d / "latency.csv")
    assert lat[lat.scope == "layer"].note.str.startswith("kernel ").all()
