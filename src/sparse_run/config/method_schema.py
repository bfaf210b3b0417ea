"""The typed schema of the ``method/`` group: criterion × selection × schedule, controls and the layer policy.

One ``ScheduleConfig`` for every ``schedule.kind``: the keys only some kinds read are ``Optional`` with
``None`` and name those kinds in their meaning (each kind's ``validate`` in ``methods/`` requires what it reads).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from omegaconf import MISSING

from .keys import key


@dataclass
class SelectionConfig:
    """``method.selection``: how scores become a mask."""

    scope: str = key("layerwise", "layerwise | global | erk | percentile: where the threshold is taken")
    pattern: str = key("unstructured", "unstructured | block | channel | group | nm: the shape of what is removed")
    block: Optional[list[int]] = key(None, "pattern block: block shape [rows, cols] (null: 4x4 or the target's)")
    group: int = key(4, "pattern group: g consecutive output channels at one input / kernel tap (2, 4, 8, 16)")
    permute: bool = key(False, "pattern group: permute output channels first to pack large weights into groups")
    n: Optional[int] = key(None, "pattern nm: N weights kept in every group of M")
    m: Optional[int] = key(None, "pattern nm: the group size M")
    overrides: Optional[dict[str, str]] = key(None, "pattern nm: {glob: 'N:M'} per-layer patterns")


@dataclass
class ScheduleConfig:
    """``method.schedule``: when and how much is pruned; ``kind`` picks the method module (methods.REGISTRY)."""

    kind: str = key(MISSING, "none | iterative | oneshot | at_init | gradual | dynamic | sharing | random_search | "
                             "expert_prune | nm | nm_compare | pattern_compare | kernel_study | graph_rnn | "
                             "lazy_neuron | topk_moe_theory | dass")
    rounds: Optional[int] = key(None, "iterative: pruning rounds after the dense round 0; sharing: LTR rounds (null: none)")
    rate: Optional[float] = key(None, "iterative, sharing (LTR): fraction of surviving weights removed per round")
    rewind: Optional[str] = key(None, "iterative: init | step | none: where survivors return after each round")
    rewind_step: Optional[int] = key(None, "iterative (rewind=step), sharing (LTR): the iteration whose state "
                                           "survivors return to")
    rewinds: Optional[list[str]] = key(None, "iterative: several rewinds, one chain each sharing round 0")
    initial_sparsity: Optional[float] = key(None, "gradual: s_i, the sparsity at start_step")
    final_sparsity: Any = key(None, "gradual: s_f, a number or a list (one arm each)")
    start_step: Optional[int] = key(None, "gradual: t0, first pruning step (dynamic: of its gmp arm)")
    end_step: Optional[int] = key(None, "gradual: last pruning step, masks frozen after it; dynamic: T_end, no "
                                        "updates from it on (null: 75 % of train.steps)")
    every_steps: Optional[int] = key(None, "gradual: Δt, steps between mask updates; dynamic: ΔT")
    zeta0: Optional[float] = key(None, "dynamic: ζ0 in (0, 1], the drop fraction at step 0, cosine-decayed to 0 at T_end")
    long_variants: Optional[list[str]] = key(None, "dynamic: arms also trained for long_factor × train.steps (rigl_2x)")
    long_factor: Optional[float] = key(None, "dynamic: the training-length multiplier of long_variants (>= 1)")
    dense: Optional[bool] = key(None, "gradual, at_init, dynamic, sharing, random_search: also train the dense "
                                      "baseline (round 0)")
    compressions: Optional[list[float]] = key(None, "sharing: shareable weights per trained parameter (>= 1), one "
                                                    "level each")
    init_stds: Optional[list[float]] = key(None, "sharing: std of the shared array z at init, one arm each")
    index_cache: Optional[bool] = key(None, "sharing: keep each weight's slot (int32) and sign (int8), 5 bytes a weight, "
                                            "instead of hashing them every pass (~8x slower steps on CPU)")
    units_removed: Optional[list[float]] = key(None, "random_search: fraction of every hidden layer's units removed, "
                                                     "one level each")
    spaces: Optional[list[str]] = key(None, "random_search: node | weight, the search spaces (weight: unstructured "
                                            "masks of the node level's per-layer counts)")
    candidates: Optional[int] = key(None, "random_search: N, masks sampled and scored per level and space")
    search_steps: Optional[int] = key(None, "random_search: the short training that scores a candidate")
    retrain_seeds: Optional[int] = key(None, "random_search: fresh data orders each retrained arm is trained on")
    target_acc: Optional[float] = key(None, "random_search: validation accuracy whose first crossing gives "
                                            "epochs_to_target")
    experts_kept: Optional[list[int]] = key(None, "expert_prune: experts left after the reduction, one level each "
                                                  "(top_k … experts − 1)")
    reductions: Optional[list[str]] = key(None, "expert_prune: random | drop | average | matched_average | dern")
    calibration: Optional[int] = key(None, "expert_prune: training examples the router statistics are taken on")
    densities: Optional[list[float]] = key(None, "at_init, oneshot, dynamic, pattern_compare, dass: fractions kept, one "
                                                 "arm per level")
    sparsities: Optional[list[float]] = key(None, "at_init, oneshot, dynamic, pattern_compare, dass: or the fractions "
                                                  "removed")
    finetune_steps: Optional[int] = key(None, "oneshot, dynamic (prune_ft), pattern_compare, dass: fine-tuning steps "
                                              "after pruning each level")
    selections: Any = key(None, "pattern_compare: selection arms, a list of mappings {label, pattern, group, permute, "
                                "block} of method.selection overrides")
    timed: Optional[bool] = key(None, "pattern_compare: time every fine-tuned arm in its pattern's execution against "
                                      "the faster dense kernel (hardware.* protocol; latency.csv)")
    finetune_evals: Optional[int] = key(None, "oneshot: evaluations during fine-tuning (test_acc_ft_i columns)")
    models: Any = key(None, "oneshot, graph_rnn, lazy_neuron: model arms, a list of mappings of model overrides")
    conditions: Optional[list[str]] = key(None, "lazy_neuron: the training-data conditions every model arm is "
                                                "trained under, clean | random_labels | noise_inputs | label_noise")
    topk: Optional[list[int]] = key(None, "lazy_neuron: Top-k arms of the experiment's model, k activations kept "
                                          "per token each")
    topk_conditions: Optional[list[str]] = key(None, "lazy_neuron: the conditions the Top-k arms and their ReLU "
                                                     "baseline are trained under")
    label_noise: Optional[float] = key(None, "lazy_neuron: share of training labels made wrong under label_noise "
                                             "(symmetric: uniform over the other classes)")
    corruption_stds: Optional[list[float]] = key(None, "lazy_neuron: std of the Gaussian noise added to the test "
                                                       "inputs (normalised units), one test_acc_noise_<std> column "
                                                       "each")
    ece_bins: Optional[int] = key(None, "lazy_neuron: equal-width confidence bins of the expected calibration error")
    sample_sizes: Optional[list[int]] = key(None, "topk_moe_theory: n, the simulated sample sizes (increasing, >= 3)")
    replications: Optional[int] = key(None, "topk_moe_theory: data sets drawn and fitted per sample size")
    fits: Optional[list[str]] = key(None, "topk_moe_theory: the fitted models, k<experts>_K<top_k> (k2_K1: exact)")
    restarts: Optional[int] = key(None, "topk_moe_theory: random L-BFGS starts of a top-K >= 2 fit, besides the warm "
                                        "starts from top-1 fits")
    fit_steps: Optional[int] = key(None, "topk_moe_theory: L-BFGS iterations per start of a top-K >= 2 fit")
    channels: Optional[int] = key(None, "dass: C, the cells' channel count (the stem has 3·C)")
    cells: Optional[int] = key(None, "dass: stride-1 normal cells stacked (1 or 2), all sharing one α")
    cell_nodes: Optional[int] = key(None, "dass: intermediate nodes per cell (DARTS: 4)")
    ops: Optional[list[str]] = key(None, "dass: the candidate ops, skip | conv3 | sepconv3 | maxpool | sparseconv3 "
                                         "(the darts arm searches them without sparseconv3)")
    sparse_ratio: Optional[float] = key(None, "dass: p in [0, 1), the fraction sparseconv3 (and the α step's "
                                              "sparsified supernet) prunes")
    search_steps: Optional[int] = key(None, "dass: first-order DARTS steps (one α step on a validation batch, one "
                                            "weight step on a training batch)")
    score_steps: Optional[int] = key(None, "dass: HYDRA score-learning steps per arm and level (weights frozen)")
    score_lr: Optional[float] = key(None, "dass: SGD learning rate of the scores")
    variant: Optional[str] = key(None, "nm: ste | srste | oneshot | bdwp")
    decay: Optional[float] = key(None, "nm, nm_compare: λ_W of SR-STE (also bdwp; ste uses 0)")
    patterns: Optional[list[str]] = key(None, "nm_compare: the 'N:M' patterns compared")
    variants: Optional[list[str]] = key(None, "nm_compare: the variants run at every pattern; dynamic: the arms run "
                                              "at every level, static | set | rigl | snfs | dsl | gmp | prune_ft; "
                                              "sharing: stable_rps | roast | hashed_net (+ _gs / _nogs)")
    bdwp_patterns: Optional[list[str]] = key(None, "nm_compare: the patterns bdwp runs at")
    repeats: Optional[int] = key(None, "nm_compare: paired seeds for every arm (seed, +1, ...)")
    dense_repeats: Optional[int] = key(None, "nm_compare: dense seeds for the noise band")
    families: Optional[list[str]] = key(None, "graph_rnn: random-graph families, ba | ws")
    graphs: Optional[int] = key(None, "graph_rnn: graphs per family and cell")
    nodes: Optional[list[int]] = key(None, "graph_rnn: [min, max] nodes, drawn uniformly")
    ba_m_div: Optional[int] = key(None, "graph_rnn: Barabási–Albert m = max(1, n // ba_m_div)")
    ws_k_div: Optional[int] = key(None, "graph_rnn: Watts–Strogatz k = max(2, n // ws_k_div)")
    ws_p: Optional[float] = key(None, "graph_rnn: Watts–Strogatz rewiring probability")
    ws_tries: Optional[int] = key(None, "graph_rnn: tries of connected_watts_strogatz_graph")
    gate_masks: Optional[str] = key(None, "graph_rnn: repeat | tile: mask rows of gated cells")


@dataclass
class ControlsConfig:
    """``method.controls``: control arms beside the pruned ones."""

    variants: list[str] = key([], "reinit | random | small_dense (the kinds that allow them: methods.REGISTRY)")
    rounds: Optional[list[int]] = key(None, "rounds at which controls run (null: every round)")


@dataclass
class PolicyConfig:
    """``method.policy``: which weights may be pruned, and at which rate."""

    layers: list[str] = key(["linear", "conv"], "layer types pruned: linear | conv | rnn | embedding")
    prune_first: bool = key(True, "prune the first layer")
    prune_last: bool = key(True, "prune the output layer")
    last_rate_scale: float = key(1.0, "the output layer's rate multiplier (LTH: 0.5)")
    exclude: list[str] = key([], "glob patterns of weights never pruned")
    rate_scale: dict[str, float] = key({}, "{glob: multiplier} per-layer rate overrides")


@dataclass
class MethodConfig:
    """``method/``: one pruning method (or study), named in the results' method column."""

    name: str = key(MISSING, "method name (the summary's method column)")
    criterion: str = key("magnitude", "score: magnitude | random | snip | grasp | synflow (sparsity.CRITERIA)")
    criteria: Optional[list[str]] = key(None, "several criteria compared in one run (rows named by criterion)")
    selection: SelectionConfig = key(SelectionConfig(), "how scores become a mask")
    schedule: ScheduleConfig = key(ScheduleConfig(), "when and how much is pruned")
    controls: ControlsConfig = key(ControlsConfig(), "control arms")
    policy: PolicyConfig = key(PolicyConfig(), "which weights may be pruned")
    policies: Optional[list[Any]] = key(None, "oneshot: policy arms, each {label, ...overrides of policy}")
    synflow_rounds: int = key(100, "criterion synflow: iterations of its exponential density schedule")
    grasp_temperature: float = key(200.0, "criterion grasp: softmax temperature of the loss")
