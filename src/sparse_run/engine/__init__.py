"""The engine: trains and records one arm and knows no method — the training loop (``train``), lock-step
replicates (``replicates``, ``lanes``), the fast CPU kernels (``onednn``), the run context (``run``: ``Run``,
``train_arm``), cached stages, the run writer (``results``), model / policy arms and loggers.

May import models, data, sparsity, store and config; never hardware, report, methods, studies or execute.
"""
