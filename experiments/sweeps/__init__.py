"""Sweep definitions for `python -m experiments.sweep --sweep experiments/sweeps/<name>.py`.

Each file's `get_config()` returns an ml_collections ConfigDict with
  config:          the training config file, relative to the repository root ('configs/cifar10.py');
                   each point passes its preset to it, as in `--config configs/cifar10.py:resnet56`.
  axes:            the grid, a product over
                     family: 'plain' | 'resnet' | 'preact_resnet'  (the zoo's name prefixes)
                     depth:  any depth the zoo has for that family (6n+2 on CIFAR)
                   and optionally seed (config.seed) and shortcut (config.model.shortcut).
  base_overrides:  config fields every point sets, nested as in the config:
                   {'train': {'num_steps': 800}}.
  exclude:         point names to leave out of the product, e.g. ('plain1202',).
  workdir_root:    where the points' workdirs go when --root is not given.

A point is named after its preset plus its other axes (`resnet56`, `resnet110_seed-3`) and trains in
`<root>/<name>` as an ordinary `resnet_jax.main` run.
"""
