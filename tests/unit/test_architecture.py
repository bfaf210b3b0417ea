"""Architecture (issue 13): layers that import only downward, one list of schedule kinds, small modules.

The layer contract is read from ``pyproject.toml`` (``[tool.importlinter]``, what ``lint-imports`` checks in
``make test``) and re-checked here from the source with ``ast``, so the suite catches an upward import even
where import-linter is not installed.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import tomllib
import yaml

from conftest import REPO, compose_cfg

SRC = REPO / "src" / "sparse_run"
KIND_WORDS = ("iterative", "oneshot", "at_init", "gradual", "dynamic", "sharing", "random_search", "expert_prune", "nm",
              "nm_compare", "pattern_compare", "kernel_study", "graph_rnn", "lazy_neuron", "topk_moe_theory", "dass")


def _modules() -> dict[str, Path]:
    """Dotted module name → file, for every module of the package (the conf symlink aside)."""
    out = {}
    for f in SRC.rglob("*.py"):
        rel = f.relative_to(SRC)
        if rel.parts[0] == "conf":
            continue
        parts = ["sparse_run", *rel.with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = f
    return out


def _imports(name: str, path: Path) -> list[tuple[int, str]]:
    """(line, imported module) for every import in the file, function-local ones included; imports under
    ``if TYPE_CHECKING:`` are left out (annotations only, as in the import-linter config)."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("sparse_run")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.startswith("sparse_run"):
                out += [(node.lineno, f"{mod}.{a.name}") for a in node.names]
    return out


def _contracts() -> list[dict]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def _layer_of(module: str, layers: list[list[str]]) -> tuple[int, str] | None:
    for i, group in enumerate(layers):
        for pkg in group:
            if module == pkg or module.startswith(pkg + "."):
                return i, pkg
    return None


def test_packages_import_only_downward():
    layers = next(c for c in _contracts() if c["type"] == "layers")["layers"]
    layers = [[p.strip() for p in group.split("|")] for group in layers]
    modules = _modules()
    unplaced = [m for m in modules if m.count(".") and _layer_of(m, layers) is None
                and m not in ("sparse_run.__main__",)]
    assert not unplaced, f"modules outside every layer of [tool.importlinter]: {unplaced}"
    bad = []
    for name, path in modules.items():
        mine = _layer_of(name, layers)
        if mine is None:
            continue
        for line, imported in _imports(name, path):
            theirs = _layer_of(imported, layers)
            if theirs is None or theirs[1] == mine[1]:
                continue  # the package root (__version__) or the same package
            if theirs[0] < mine[0] or theirs[0] == mine[0]:  # upward, or a sibling of the same layer
                bad.append(f"{path.relative_to(REPO)}:{line} imports {imported}")
    assert not bad, "imports against the layer order:\n" + "\n".join(bad)


def test_report_imports_neither_engine_nor_methods_nor_studies():
    forbidden = next(c for c in _contracts() if c["type"] == "forbidden" and "sparse_run.report" in c["source_modules"])
    assert {"sparse_run.engine", "sparse_run.methods", "sparse_run.studies"} <= set(forbidden["forbidden_modules"])
    bad = [f"{name}:{line} {imp}" for name, path in _modules().items() if name.startswith("sparse_run.report")
           for line, imp in _imports(name, path)
           if any(imp == f or imp.startswith(f + ".") for f in forbidden["forbidden_modules"])]
    assert not bad


def test_schedule_kinds_are_listed_only_in_the_registry():
    """No file but the registry enumerates kinds: a literal tuple / list / set / dict holding two or more kind
    names is a second list that a new kind would have to be added to."""
    from sparse_run.methods import REGISTRY

    assert set(KIND_WORDS) | {"none"} == set(REGISTRY)
    lists = []
    for f in SRC.rglob("*.py"):
        if "conf" in f.relative_to(SRC).parts:
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, (ast.Tuple, ast.List, ast.Set, ast.Dict)):
                elts = node.keys if isinstance(node, ast.Dict) else node.elts
                words = {e.value for e in elts if isinstance(e, ast.Constant) and e.value in KIND_WORDS}
                if len(words) >= 2:
                    lists.append(f"{f.relative_to(REPO)}:{node.lineno} {sorted(words)}")
    assert not lists, "schedule kinds listed outside methods.REGISTRY:\n" + "\n".join(lists)


def test_every_shipped_method_yaml_names_a_registered_kind():
    from sparse_run.methods import REGISTRY

    used = set()
    for f in (REPO / "conf").rglob("*.yaml"):
        text = yaml.safe_load(f.read_text()) or {}
        kind = (((text.get("method") or text).get("schedule") or {}) if isinstance(text, dict) else {}).get("kind")
        if kind is not None:
            assert kind in REGISTRY, f"{f}: schedule.kind {kind!r} is not registered"
            used.add(kind)
    assert used == set(REGISTRY), f"registered kinds no shipped config uses: {set(REGISTRY) - used}"


def test_the_method_module_declares_what_validation_enforces():
    """Controls, lock-step replicates and model arms come from the kind's ``Method``, not from lists elsewhere."""
    from sparse_run.config import ConfigError
    from sparse_run.execute import effective
    from sparse_run.methods import REGISTRY

    assert REGISTRY["iterative"].controls == ("reinit", "random") and REGISTRY["iterative"].lockstep
    with pytest.raises(ConfigError, match=r"allowed: small_dense$"):
        effective(compose_cfg("experiment=gmp_mnist", "method.controls.variants=[reinit]"))
    with pytest.raises(ConfigError, match="replicates > 1 support: none, iterative$"):
        effective(compose_cfg("experiment=gmp_mnist", "train.replicates=2"))
    oneshot = REGISTRY["oneshot"]
    assert oneshot.figures_for(compose_cfg("experiment=rnn_prune_reber")) == "rnn"
    assert oneshot.figures_for(compose_cfg("method=oneshot")) == "levels"
    assert REGISTRY["nm_compare"].figures_for(None) == "nm" and not REGISTRY["kernel_study"].trains


def test_no_module_over_400_lines_without_a_reason():
    long = [f"{f.relative_to(REPO)} ({n} lines)" for f in SRC.rglob("*.py") if "conf" not in f.relative_to(SRC).parts
            and (n := len(f.read_text().splitlines())) > 410
            and not re.search(r"over 400 lines", ast.get_docstring(ast.parse(f.read_text())) or "")]
    assert not long, f"modules over ~400 lines without a reason in their docstring: {long}"


def test_every_package_says_what_it_is_for_and_what_it_may_import():
    missing = []
    for init in SRC.rglob("__init__.py"):
        if "conf" in init.relative_to(SRC).parts or init.parent == SRC:
            continue
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        if not re.search(r"\bimports?\b", doc, re.I):
            missing.append(str(init.relative_to(REPO)))
    assert not missing, f"package docstrings that do not say what the layer may import: {missing}"


def test_make_test_runs_ruff_and_the_layer_contract():
    make = (REPO / "Makefile").read_text()
    target = make[make.index("\ntest:"):].split("\n\n")[0]
    assert "lint-imports" in target and "ruff check" in target
    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["test"]
    assert any(e.startswith("ruff") for e in extra) and any(e.startswith("import-linter") for e in extra)
