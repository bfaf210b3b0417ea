"""The typed config schema: every key with its type, default and one-line meaning, written once.

``RootConfig`` holds the top-level keys and one dataclass per group (``method/``: ``method_schema.py``); each is
registered in Hydra's ConfigStore as ``_schema_root`` / ``_schema_<group>`` by ``register()``, which
``sparse_run.conf`` runs on import. ``config.yaml`` lists ``_schema_root`` first and each group's YAML files list
``/_schema_<group>@_here_`` first in their ``defaults``, then set only what differs. A key no dataclass declares,
or a value of the wrong type, fails at composition; the CLI turns that into one ``error: <field>: ...`` line
(``schema_error``), and ``check_keys`` refuses keys added with ``+``. Keys only some options read (e.g.
``model.depth``) are ``Optional`` with ``None`` and say who reads them. Ranges and cross-field rules stay in the
validation (run once per run); this module says what exists and of which type.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import MISSING as NO_DEFAULT
from dataclasses import dataclass, fields, is_dataclass
from typing import Any, Optional, get_args, get_type_hints

from omegaconf import MISSING

from .errors import ConfigError
from .keys import key
from .method_schema import MethodConfig


@dataclass
class TrainConfig:
    """``train/``: the training loop. Step counts are scaled by the budget."""

    optimizer: str = key("adam", "adam | adamw | sgd")
    lr: float = key(1.2e-3, "learning rate (peak, after warmup)")
    momentum: float = key(0.0, "SGD momentum in [0, 1)")
    nesterov: bool = key(False, "SGD: Nesterov momentum")
    weight_decay: float = key(0.0, "L2 penalty (adamw: decoupled weight decay)")
    batch_size: int = key(60, "examples per step")
    steps: int = key(50000, "iterations per training run (per round); scaled by the budget")
    eval_every: int = key(100, "validation + test evaluation cadence in steps (budget.evals may set it)")
    lr_schedule: str = key("constant", "constant | step | cosine")
    milestones: list[float] = key([], "step schedule: fractions of the run where lr is multiplied by gamma")
    gamma: float = key(0.1, "step schedule: lr factor at each milestone")
    warmup_steps: int = key(0, "linear lr warmup from 0 over these steps; scaled by the budget")
    checkpoint_every: int = key(1000, "mid-run checkpoint cadence for resume (0: only at arm boundaries)")
    grad_clip: Optional[float] = key(None, "max global gradient norm after masking (null / 0: off)")
    compile: bool = key(False, "torch.compile the model")
    linear_kernel: str = key("auto", "auto | onednn | aten: nn.Linear on CPU through oneDNN (auto: eager, where it "
                                     "measures faster on this machine)")
    sparse_kernel: str = key("auto", "auto | dense | csr | cpp: masked nn.Linear layers through sparse kernels on CPU "
                                     "(auto: per layer, whichever measures faster at each arm's first step)")
    replicates: int = key(1, "K > 1: seeds seed..seed+K-1 trained in one vectorised pass (lock-step kinds)")
    chance_check: bool = key(True, "flag an arm ending at chance accuracy (copied from budget.chance_check)")
    probe_activations: int = key(0, "> 0: at every evaluation, the share of non-zero activations per ReLU / Top-k / "
                                    "GELU layer on this many training and validation examples (0: off)")
    probe_tau: float = key(0.0, "the activation probe's zero: |a| <= tau counts as zero for GELU (ReLU: exactly 0)")


@dataclass
class BudgetConfig:
    """``budget/``: everything a budget may change, applied by one rule (``config.budget``)."""

    name: str = key(MISSING, "the budget's name (recorded in every row; no code branches on it)")
    steps_scale: float = key(1.0, "multiplies train.steps, train.warmup_steps and method.schedule.*_step(s)")
    min_steps: int = key(1, "floor of a scaled train.steps")
    evals: Optional[int] = key(None, "evaluations per training run (null: keep train.eval_every)")
    max_rounds: Optional[int] = key(None, "cap on pruning rounds (null: the method's)")
    control_rounds: Optional[list[int]] = key(None, "rounds at which control arms run (null: the method's)")
    train_subset: Optional[int] = key(None, "use only this many training examples (null: all)")
    eval_subset: Optional[int] = key(None, "evaluate on this many validation / test examples (null: all)")
    data_fallback: bool = key(False, "absent dataset files -> its synthetic stand-in (dataset.stand_in), announced")
    chance_check: bool = key(True, "an arm ending at chance accuracy gets status at_chance and a warning")
    short_timing: bool = key(False, "hardware targets time with their short protocol (hardware.smoke)")
    kernel_study: dict[str, Any] = key({}, "overrides of the kernel study's settings (fewer shapes, rounds)")


@dataclass
class PathsConfig:
    """``paths/``: where results and prepared datasets live."""

    results_dir: str = key("results", "every run writes below this")
    data_dir: str = key(MISSING, "prepared datasets (default: $SPARSE_RUN_DATA or ~/.cache/sparse-run/data)")


@dataclass
class DistConfig:
    """``dist``: one run trained by N processes (``torchrun --nproc-per-node N -m sparse_run``; docs/scaling.md)."""

    world_size: Optional[int] = key(None, "processes this run expects (null: what the launcher started)")
    backend: str = key("auto", "auto (nccl on cuda, gloo on cpu) | gloo | nccl")
    timeout_s: int = key(600, "a collective that waits longer stops the run (a rank that died or hung)")


@dataclass
class LoggerConfig:
    """``logger/``: where metrics go besides the result files (always written)."""

    kind: str = key("csv", "csv | wandb")
    project: str = key("sparse-run", "wandb: project")
    entity: Optional[str] = key(None, "wandb: entity (null: the account's default)")
    group: Optional[str] = key(None, "wandb: run group")
    mode: str = key("offline", "wandb: offline | online | disabled")


@dataclass
class AugmentConfig:
    """``dataset.augment``: training batches only, on the device (``data/augment.py``)."""

    crop_padding: int = key(0, "random crop of the image zero-padded by this many pixels (0: off)")
    hflip: bool = key(False, "random horizontal flip")


@dataclass
class SyntheticConfig:
    """``dataset.synthetic``: the generated stand-in's sizes (``data/synthetic.py``)."""

    train_size: int = key(6000, "training examples before the validation split")
    test_size: int = key(1000, "test examples")
    seed: int = key(0, "generates prototypes and noise")
    snr: float = key(6.0, "mean distance between class prototypes, in noise standard deviations")


@dataclass
class ImplicitConfig:
    """``dataset.implicit``: the synthetic implicit-feedback generator (``data/implicit.py``)."""

    users: int = key(2000, "users")
    items: int = key(1000, "items")
    rank: int = key(8, "rank of the true preferences")
    per_user: float = key(30.0, "mean interactions per user (Poisson, at least 5)")
    popularity: float = key(1.0, "weight of the Zipf-like item-popularity bias")
    temperature: float = key(1.0, "softness of each user's choice among items")
    test_fraction: float = key(0.2, "each user's interactions held out for test")
    val_fraction: float = key(0.125, "of the rest, held out for validation (0.125: 10 % of all)")
    seed: int = key(0, "generates the data (never the run seed)")


@dataclass
class DatasetConfig:
    """``dataset/``: one dataset; keys below ``layout`` are read by some sources only (named in their meaning)."""

    name: str = key(MISSING, "dataset name (the summary's dataset column)")
    source: str = key(MISSING, "mnist | fashion_mnist | cifar10 | reber | synthetic | implicit: what produces the tensors")
    root: Optional[str] = key(None, "directory of its files (null: paths.data_dir)")
    download: bool = key(True, "fetch the files when none are on disk (needs the internet)")
    num_classes: int = key(MISSING, "classes of the labels")
    val_size: int = key(MISSING, "examples held out of the training set for validation")
    split_seed: int = key(0, "fixes the validation split: every run and arm sees the same one")
    mean: Any = key(MISSING, "normalisation mean: one number or one per channel")
    std: Any = key(MISSING, "normalisation std: one number or one per channel")
    layout: str = key("image", "image [C,H,W] | sequence [T,F] | tokens | interactions [user, item] pairs")
    shape: list[int] = key([], "input shape the models see")
    train_examples: Optional[int] = key(None, "training set size before the split (checked against the batch)")
    stand_in: Optional[str] = key(None, "synthetic dataset used when its files are absent and budget.data_fallback")
    store: Optional[str] = key(None, "prepared file's folder under the root (null: name; seq_mnist shares mnist's)")
    augment: Optional[AugmentConfig] = key(None, "training augmentation (image layout; null: none)")
    synthetic: Optional[SyntheticConfig] = key(None, "source synthetic: generator settings")
    implicit: Optional[ImplicitConfig] = key(None, "source implicit: generator settings")
    size: Optional[int] = key(None, "source reber: strings in all")
    test_size: Optional[int] = key(None, "source reber: the last this many strings are the test set")
    seed: Optional[int] = key(None, "source reber: generates the strings")
    embedded: Optional[bool] = key(None, "source reber: the embedded grammar (false: plain Reber)")
    max_len: Optional[int] = key(None, "source reber: longer valid strings are redrawn; = shape[0]")


@dataclass
class ModelConfig:
    """``model/``: one architecture (``arch``); keys after ``init`` are read by the archs named in their meaning."""

    name: str = key(MISSING, "model name (the summary's model column)")
    arch: str = key(MISSING, "mlp | convfc | vgg | resnet | mobilenet_v1 | mobilenet_v2 | rnn | mf | vit | moe (models.ARCHS)")
    width: float = key(1.0, "multiplies every channel count / hidden size (small-dense baselines)")
    init: str = key(MISSING, "glorot_normal | glorot_uniform | kaiming_normal | kaiming_uniform | default (rnn)")
    hidden: Any = key(None, "mlp, convfc: hidden layer sizes (list); rnn: hidden size per layer; mf: embedding dim; "
                            "vit: MLP hidden size; moe: each expert's hidden size")
    blocks: Optional[list[list[int]]] = key(None, "convfc: conv channels per pooled block")
    kernel: Optional[int] = key(None, "convfc: conv kernel size")
    padding: Any = key(None, "convfc: 'same' or an integer")
    depth: Optional[int] = key(None, "vgg: 11 | 13 | 16 | 19; resnet: 6n + 2; vit: transformer blocks")
    widths: Optional[list[int]] = key(None, "resnet: channels of the three stages; mobilenet_v1: the stem's, then "
                                            "each separable block's pointwise channels")
    stem_stride: Optional[int] = key(None, "mobilenet_v1 / v2: stride of the stem convolution (v2: 2, torchvision's)")
    cell: Optional[str] = key(None, "rnn: tanh | relu | gru | lstm")
    layers: Optional[int] = key(None, "rnn: stacked recurrent layers")
    embedding: Optional[int] = key(None, "rnn: embedding size for token inputs (ignored for float sequences)")
    activation: str = key("relu", "mlp, vit: relu | gelu | topk, the hidden layers' activation (a module the "
                                  "activation-sparsity probe hooks)")
    activation_k: Optional[int] = key(None, "activation topk: activations kept per token, 1 <= k < the layer's width")
    patch: Optional[int] = key(None, "vit: patch side (must divide the image)")
    dim: Optional[int] = key(None, "vit: token width; moe: the stem's output width")
    heads: Optional[int] = key(None, "vit: attention heads (must divide dim)")
    experts: Optional[int] = key(None, "moe: experts in the MoE layer")
    top_k: Optional[int] = key(None, "moe: experts each token is routed to (<= experts)")
    aux_weight: Optional[float] = key(None, "moe: weight of the load-balancing loss added to the task loss")


@dataclass
class ShortTimingConfig:
    """``hardware.smoke``: the timing protocol under a budget with ``short_timing`` (seconds; numbers mean little)."""

    warmup: int = key(1, "untimed calls of each contender")
    rounds: int = key(5, "timed rounds")
    min_time_ms: float = key(1.0, "a sample repeats the call until it lasts this long")


@dataclass
class HardwareConfig:
    """``hardware/``: the execution target; the timing protocol applies to every ``execution`` but dense."""

    name: str = key(MISSING, "the target's name (hardware column)")
    execution: str = key("dense", "dense | csr | bsr | group | slim | semi_structured")
    pattern: str = key("any", "what the method's selection must produce: any | block | channel | group | nm")
    device: str = key("cpu", "where the target is timed: cpu | cuda")
    index_dtype: str = key("int32", "csr, bsr: index dtype, int32 | int64")
    block: Optional[list[int]] = key(None, "bsr: block shape [b, b]")
    group: Optional[int] = key(None, "group: g of the g×1 groups it executes (2, 4, 8, 16)")
    n: Optional[int] = key(None, "semi_structured: N of the N:M pattern")
    m: Optional[int] = key(None, "semi_structured: M of the N:M pattern")
    dtype: Optional[str] = key(None, "semi_structured: float16 | bfloat16")
    batch_sizes: list[int] = key([1, 64, 1024], "batch sizes timed")
    threads: Optional[int] = key(None, "threads fixed during timing (null: the run's threads, else torch's)")
    warmup: int = key(3, "untimed calls of each contender")
    rounds: int = key(15, "timed rounds; dense and target alternate in shuffled order each round")
    min_time_ms: float = key(5.0, "a sample repeats the call until it lasts this long")
    bootstrap: int = key(2000, "resamples for the interval of the median speedup")
    ci: float = key(0.95, "confidence level of that interval")
    layers: bool = key(True, "also time each masked layer alone (and its channel-pruned equivalent)")
    smoke: ShortTimingConfig = key(ShortTimingConfig(), "the short protocol (budget.short_timing)")


@dataclass
class ClaimConfig:
    """``claims[i]``: one claim of the experiment's paper, scored on our runs (``report/claims.py``).

    The quantity is computed per seed (``diff`` / ``ratio`` pair arms A and B of the same run and seed), then
    averaged with a 95 % Student-t interval; ``corr`` pools the A rows of every run (Fisher-z interval)."""

    name: str = key(MISSING, "short id, unique within the experiment")
    statement: str = key(MISSING, "the paper's claim in words, with its number")
    source: str = key(MISSING, "where the paper says it: table / figure / section, 'abstract', or 'unverified'")
    paper_value: Optional[float] = key(None, "the paper's number in the quantity's units (null: none stated)")
    measure: str = key(MISSING, "what we compute, in words (arms, metric, level, units)")
    quantity: str = key("diff", "value | diff | ratio | corr: A; A - B; A / B per seed; Pearson r of x and metric")
    metric: str = key("test_acc_at_early_stop", "the column of the table the quantity is computed on")
    metric_b: Optional[str] = key(None, "arm B's column when it differs (null: metric)")
    table: str = key("summary.csv", "the run file the rows come from (summary.csv, kernel.csv, hardware.csv ...)")
    a: dict[str, Any] = key({}, "arm A's rows: column -> value (a string may be a glob; {near: x}: the closest level)")
    b: dict[str, Any] = key({}, "arm B's rows (diff, ratio), from the same run and seed as A")
    x: Optional[str] = key(None, "corr: the column correlated with the metric")
    scale: float = key(1.0, "multiplies the quantity (100: accuracy fractions in percentage points)")
    expect: str = key(MISSING, "the condition for 'reproduced': '> 0', '<= 1', 'in [-0.3, 0.3]'")
    overrides: list[str] = key([], "the command-line overrides (besides budget and seed) of the runs it is scored on")
    unit: str = key("seed", "seed | run: what is paired and replicated; run averages each arm's rows of a run first "
                            "(e.g. a search's retrain seeds, which share its masks), one value per run")
    min_n: int = key(3, "fewer seeds / runs (corr: points) than this -> inconclusive")
    note: Optional[str] = key(None, "the likely reason when it does not reproduce at our scale")


@dataclass
class RootConfig:
    """The top-level keys (``config.yaml``) and the groups; experiments set keys of their own kinds below."""

    name: str = key("default", "experiment name: first level of the run directory, experiment column")
    seed: int = key(0, "fixes init, data order and mask tie-breaking")
    device: str = key("cpu", "cpu | cuda | auto")
    threads: Optional[int] = key(None, "torch intra-op threads (null: torch's default); recorded in results")
    progress: bool = key(True, "progress bar (only drawn when stderr is a terminal)")
    cache: bool = key(True, "reuse shared stages (dense pre-training) from <paths.results_dir>/.cache")
    restart: bool = key(False, "clear this run's directory and start afresh; not part of the config hash")
    budget_sizes: Any = key(None, "experiment=rnn_*: the experiment's sizes per budget, picked by budget.name")
    budget_note: Optional[str] = key(None, "experiment=rnn_*: the line printed about those sizes")
    kernel_study: Any = key(None, "experiment=hw_sparse_1x1: the kernel study's settings (studies/kernel_study.py)")
    dist: DistConfig = key(DistConfig(), "data-parallel runs; not part of the config hash or the directory name")
    claims: list[ClaimConfig] = key([], "the paper's claims this experiment checks (scoreboard; not part of the hash)")
    model: ModelConfig = key(ModelConfig(), "model/")
    dataset: DatasetConfig = key(DatasetConfig(), "dataset/")
    method: MethodConfig = key(MethodConfig(), "method/")
    hardware: HardwareConfig = key(HardwareConfig(), "hardware/")
    train: TrainConfig = key(TrainConfig(), "train/")
    budget: BudgetConfig = key(BudgetConfig(), "budget/")
    logger: LoggerConfig = key(LoggerConfig(), "logger/")
    paths: PathsConfig = key(PathsConfig(), "paths/")


GROUPS: dict[str, type] = {"train": TrainConfig, "budget": BudgetConfig, "paths": PathsConfig,
                           "logger": LoggerConfig, "dataset": DatasetConfig, "model": ModelConfig,
                           "hardware": HardwareConfig, "method": MethodConfig}


def register() -> None:
    """Store each group's schema as ``_schema_<group>`` (a root config, so it is no option of the group)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    for group, node in GROUPS.items():
        cs.store(name=f"_schema_{group}", node=node)
    cs.store(name="_schema_root", node=RootConfig)


def _type_name(hint: Any) -> str:
    text = str(hint).replace("typing.", "").replace("sparse_run.config.schema.", "")
    return getattr(hint, "__name__", text) if isinstance(hint, type) else text


def rows(groups: dict[str, type] | None = None) -> list[tuple[str, str, str, str]]:
    """(key, type, default, meaning) for every field of every typed group, nested dataclasses expanded."""
    out: list[tuple[str, str, str, str]] = []
    for path, cls in ({"": RootConfig, **GROUPS} if groups is None else groups).items():
        hints = get_type_hints(cls)
        for f in fields(cls):
            if not path and f.name in GROUPS:
                continue  # the groups follow, each under its own name
            name, hint = f"{path}.{f.name}" if path else f.name, hints[f.name]
            if f.default is not NO_DEFAULT:
                default: Any = f.default
            else:
                default = f.default_factory()  # type: ignore[misc]
            nested = next((a for a in (hint, *get_args(hint)) if is_dataclass(a)), None)
            shown = "(required)" if default == MISSING else "(below)" if is_dataclass(default) else repr(default)
            out.append((name, _type_name(hint), shown, f.metadata.get("help", "")))
            if nested is not None:
                out += rows({name: nested})
    return out


def train_config(cfg: Any = None) -> Any:
    """A ``train`` node with the schema's defaults under whatever ``cfg`` sets: the engine's entry points accept
    partial configs (tests, tools) and then read every key as a typed field."""
    from omegaconf import OmegaConf

    return OmegaConf.merge(OmegaConf.structured(TrainConfig), cfg if cfg is not None else {})


def dataset_config(**values: Any) -> Any:
    """A ``dataset`` node with the schema's defaults (for code that prepares data without composing a run)."""
    from omegaconf import OmegaConf

    return OmegaConf.merge(OmegaConf.structured(DatasetConfig), values)


def _meanings() -> dict[str, tuple[str, str]]:
    return {k: (t, m) for k, t, _, m in rows()}


def schema_error(e: BaseException) -> ConfigError | None:
    """Hydra's composition error for a value of the wrong type (``train.lr=abc``, or in a YAML file) → one
    line naming the field, the value and the expected type; None when ``e`` is not such an error."""
    from omegaconf.errors import ValidationError

    while e is not None and not isinstance(e, ValidationError):
        e = e.__cause__  # type: ignore[assignment]
    if e is None or not getattr(e, "full_key", None):
        return None
    full_key = str(e.full_key)
    typ, meaning = _meanings().get(re.sub(r"\[\d+\]$", "", full_key), ("?", ""))
    return ConfigError(full_key, f"got {getattr(e, 'value', None)!r}; expected {typ}"
                                 + (f" ({meaning})" if meaning else ""))


RUN_SET = {"budget.unscaled", "dataset.fallback_from"}  # keys the run adds to the effective config


def check_keys(cfg: Any) -> None:
    """Every key is in the schema: a key added with ``+key=`` (which Hydra lets into a typed config) is read
    by no code, so it is refused like a misspelled one."""
    known = _meanings()
    nested = {k for k, (t, _) in known.items() if "Config" in t}  # dataclass-typed keys: checked inside too
    for top in cfg:
        if top not in known and top not in GROUPS:
            near = difflib.get_close_matches(str(top), list(known), n=1, cutoff=0.6)
            raise ConfigError(str(top), f"not a config key; {f'did you mean {near[0]}?' if near else 'no such key'}")
    for group in GROUPS:
        for path in _paths(cfg[group], group, nested):
            if path not in known and path not in RUN_SET:
                near = difflib.get_close_matches(path, list(known), n=1, cutoff=0.6)
                hint = f"did you mean {near[0]}?" if near else f"allowed: the keys of {group}/ (python -m sparse_run.config)"
                raise ConfigError(path, f"not a config key; {hint}")


def _paths(node: Any, prefix: str, nested: set[str]) -> list[str]:
    out = []
    for k, v in node.items():
        out.append(f"{prefix}.{k}")
        if hasattr(v, "items") and f"{prefix}.{k}" in nested:
            out += _paths(v, f"{prefix}.{k}", nested)
    return out

