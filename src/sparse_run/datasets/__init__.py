"""Dataset sources beyond MNIST (CIFAR-10, synthetic stand-ins, Reber strings) and the batched
on-device augmentation; ``data.py`` registers them and stays the one entry point."""
