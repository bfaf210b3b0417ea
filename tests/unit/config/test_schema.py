"""The typed config schema (issue 13 item 3): every key written once with its type, default and meaning; YAML
files inherit it; wrong types and unknown keys are one-line errors; one validation per run."""
from __future__ import annotations

import re
import sys
from importlib import resources

import pytest
import yaml
from omegaconf import OmegaConf

from conftest import REPO, compose_cfg, run_cli
from sparse_run import methods
from sparse_run.cli import groups
from sparse_run.config import ConfigError
from sparse_run.config.schema import GROUPS, RootConfig, check_keys, rows
from sparse_run.execute import effective

CONF = resources.files("sparse_run.conf")
KEYS = {k: (t, d, m) for k, t, d, m in rows()}


def _flat(node: dict, prefix: str) -> list[tuple[str, object]]:
    out = []
    for k, v in node.items():
        key = f"{prefix}.{k}"
        out.append((key, v))
        if isinstance(v, dict) and "Config" in KEYS.get(key, ("",))[0]:
            out += _flat(v, key)
    return out


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_every_key_of_every_typed_yaml_is_in_the_schema_with_a_matching_type(group):
    for option in groups()[group]:
        raw = yaml.safe_load(CONF.joinpath(group, f"{option}.yaml").read_text())
        raw.pop("defaults", None)
        for key, _ in _flat(raw, group):
            assert key in KEYS, f"{group}/{option}.yaml: {key} is not in config/schema.py"
        # the YAML's values merge into the dataclass without a type error (what Hydra does when composing)
        OmegaConf.merge(OmegaConf.structured(GROUPS[group]), raw)
        cfg = compose_cfg(f"{group}={option}")
        assert OmegaConf.get_type(cfg, group) is GROUPS[group], f"{group}/{option}.yaml does not inherit the schema"
        check_keys(cfg)


@pytest.mark.parametrize("experiment", groups()["experiment"])
def test_every_experiment_composes_against_the_schema(experiment):
    for budget in groups()["budget"]:
        cfg = compose_cfg(f"experiment={experiment}", f"budget={budget}")
        assert OmegaConf.get_type(cfg) is RootConfig
        for group, cls in GROUPS.items():
            assert OmegaConf.get_type(cfg, group) is cls, f"{experiment}: {group} is not typed"
        check_keys(cfg)


def test_every_schema_field_has_a_one_line_meaning_and_a_type():
    assert len(KEYS) > 80
    for key, (typ, _, meaning) in KEYS.items():
        assert meaning.strip() and "\n" not in meaning, f"{key} has no one-line meaning"
        # Any only where a key takes a number or a list (a union OmegaConf 2.3 cannot type), said in its meaning
        assert typ != "Any" or key in UNIONS, key


UNIONS = {"dataset.mean", "dataset.std", "model.hidden", "model.padding", "method.schedule.final_sparsity",
          "method.schedule.models", "method.schedule.selections", "budget_sizes", "kernel_study"}


def test_a_wrong_type_is_one_line_naming_the_field_and_the_expected_type(tmp_path):
    proc = run_cli("experiment=lottery_mnist", "budget=smoke", f"paths.results_dir={tmp_path}", "train.lr=abc",
                   check=False)
    err = proc.stderr.strip()
    assert proc.returncode == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("error: train.lr: got 'abc'; expected float"), err
    assert not any(tmp_path.iterdir())


def test_an_unknown_key_in_a_typed_group_is_refused_even_with_plus():
    with pytest.raises(ConfigError, match=r"^train\.stepz: not a config key; did you mean train\.steps\?"):
        effective(compose_cfg("experiment=lottery_mnist", "+train.stepz=3"))
    with pytest.raises(Exception, match="stepz"):  # without +, Hydra refuses it while composing
        compose_cfg("experiment=lottery_mnist", "train.stepz=3")
    with pytest.raises(ConfigError, match=r"^sed: not a config key; did you mean seed\?"):  # top-level keys too
        effective(compose_cfg("experiment=lottery_mnist", "+sed=3"))


def test_the_budget_passes_out_of_range_values_through_so_the_one_validation_names_them():
    # before: smoke scaled train.steps=-100 to its floor of 20, so a check after the budget could not see it
    with pytest.raises(ConfigError, match=r"^train\.steps: got -100"):
        effective(compose_cfg("experiment=lottery_mnist", "budget=smoke", "train.steps=-100"))
    with pytest.raises(ConfigError, match=r"^budget\.evals: got -1"):
        effective(compose_cfg("experiment=lottery_mnist", "budget.evals=-1"))


def test_a_run_validates_its_config_once(tmp_path, monkeypatch):
    from sparse_run import cli
    from sparse_run import execute as execute_mod

    calls = []
    real = methods.validate
    monkeypatch.setattr(methods, "validate", lambda cfg: (calls.append(1), real(cfg))[1])
    monkeypatch.setattr(execute_mod, "execute", lambda cfg, run_dir: run_dir)  # nothing trained
    monkeypatch.setattr(sys, "argv", ["sparse-run", "experiment=lottery_mnist", "budget=smoke",
                                      f"paths.results_dir={tmp_path}", "hydra/job_logging=none",
                                      "hydra/hydra_logging=none"])
    cli.main()
    assert len(calls) == 1


def test_help_groups_and_the_unknown_option_error_list_no_base_files(tmp_path):
    assert not [o for opts in groups().values() for o in opts if o.startswith("_")]
    out = run_cli("--help").stdout
    assert "budget: paper, quick, smoke" in out and "method: " in out
    assert "_schema" not in out and "_method_at_init" not in out
    err = run_cli("method=nope", check=False).stderr
    assert "allowed: dass, dense," in err and "_method_at_init" not in err and "_schema" not in err


def test_shared_blocks_are_written_once():
    for name in ("grasp", "magnitude_init", "pai", "random", "snip", "synflow"):
        text = CONF.joinpath("method", f"{name}.yaml").read_text()
        assert "schedule:" not in text and "/_method_at_init@_here_" in text, name
        assert compose_cfg(f"method={name}").method.schedule.kind == "at_init"
    for name in groups()["hardware"]:
        assert "bootstrap:" not in CONF.joinpath("hardware", f"{name}.yaml").read_text(), name
    assert compose_cfg("hardware=cpu_sparse").hardware.bootstrap == 2000
    assert "width:" not in (REPO / "src/sparse_run/models/build.py").read_text().split("def ")[0]
    code = "\n".join(p.read_text() for p in (REPO / "src/sparse_run").rglob("*.py") if "conf" not in p.parts)
    assert not re.search(r"""\.get\(["']width["']""", code)


def test_no_module_branches_on_the_budget_name():
    for p in (REPO / "src/sparse_run").rglob("*.py"):
        if "conf" in p.parts:
            continue
        assert not re.search(r"budget\.name\s*[=!]=|\.get\([^)]*budget\.name", p.read_text()), p
    assert compose_cfg("budget=smoke").budget.short_timing and not compose_cfg("budget=quick").budget.short_timing
    from sparse_run.hardware.kernels import settings

    smoke, _ = settings(effective(compose_cfg("experiment=hw_sparse_1x1", "budget=smoke")))
    assert smoke["rounds"] == 3 and len(smoke["shapes"]) == 2


def test_usage_doc_shows_the_current_schema_table():
    from sparse_run.config.__main__ import table

    doc = (REPO / "docs/usage.md").read_text()
    inside = doc.split("<!-- schema-table:start -->\n")[1].split("<!-- schema-table:end -->")[0]
    assert inside == table(), "docs/usage.md is stale: regenerate it with python -m sparse_run.config"
