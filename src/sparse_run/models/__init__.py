"""Models (config group ``model/``): builders keyed by ``model.arch`` — the MLP, the papers' conv nets, CIFAR
VGG / ResNet, MobileNetV2, RNNs and the graph-structured RNN of the sparse-RNN study.

Each architecture module exposes builders ``(cfg, spec) -> nn.Module`` that ``build.ARCHS`` registers; init,
seeding and validation of the shared keys (``width``, ``init``) stay in ``build.build``. Imports ``data.spec``
and ``config`` only. ``python -m sparse_run.models`` lists every shipped model with its prunable weights.
"""
from .build import ARCHS, INITS, MLP, build, init_weights

__all__ = ["ARCHS", "INITS", "MLP", "build", "init_weights"]
