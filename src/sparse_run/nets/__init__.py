"""Architectures beyond the MLP: the papers' conv nets, CIFAR VGG / ResNet, MobileNetV2 and RNNs.

Each module exposes builders ``(cfg, spec) -> nn.Module`` that ``models.ARCHS`` registers; init,
seeding and validation of the shared keys (``width``, ``init``) stay in ``models.build``.
"""
