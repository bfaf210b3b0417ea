"""``Method``: everything the rest of the code needs to know about one schedule kind, declared by its module."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from sparse_run.engine.run import Run


@dataclass(frozen=True)
class Method:
    """One ``method.schedule.kind``.

    ``run`` trains and records its arms through ``Run.train_arm``; ``validate(cfg)`` checks its own settings
    (generic ones are checked by ``config`` and the engine); ``controls``: the control variants it can run;
    ``lockstep``: ``train.replicates > 1`` runs it in lock-step (tested equal to K single runs);
    ``patterns``: the selection patterns it produces (None: it prunes nothing a hardware target could
    constrain); ``model_arms`` / ``policy_arms``: it runs ``method.schedule.models`` / ``method.policies``;
    ``several_criteria``: it compares ``method.criteria`` in one run; ``figures``: the run figures it draws
    (``levels``, ``nm``, ``rnn``, ``none``), or a function of the config saying which; ``trains``: it leaves
    a final model (``checkpoints/final.pt``) for the hardware target to time; ``permutes``: it can apply
    ``selection.permute`` (it prunes a trained or initial network once per arm, before any optimizer state);
    ``data_parallel``: it runs under ``torchrun`` with N processes (every arm through ``Run.train_arm``, every
    decision a function of synchronised state; tested equal to one process).
    """

    kind: str
    run: Callable[[Run], None]
    validate: Callable[[Any], None] | None = None
    controls: tuple[str, ...] = ()
    lockstep: bool = False
    patterns: tuple[str, ...] | None = None
    model_arms: bool = False
    policy_arms: bool = False
    several_criteria: bool = False
    figures: str | Callable[[Any], str] = "levels"
    trains: bool = True  # leaves checkpoints/final.pt: a hardware target can time the final model
    permutes: bool = False
    data_parallel: bool = False

    def figures_for(self, cfg: Any) -> str:
        return self.figures(cfg) if callable(self.figures) else self.figures
