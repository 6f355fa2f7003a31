"""Training the CycleGAN: config, data, trainer, checkpoints, DDP (``mrct train``).

Only :mod:`mrct.training.config` is torch-free; import the others where they are used.
"""
