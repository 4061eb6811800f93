"""The paper's Figure 7: the standard deviation of every layer's response, from trained checkpoints.

  python -m experiments.figure7 --root runs/sweeps/degradation_digits_cpu \
      [--runs plain20,resnet20,...] [--out DIR/figure7.png] [--num_images 512]

A response is the output of a 3x3 layer after BN, before the addition and the ReLU (paper
section 4.2). In the post-activation basic blocks of the CIFAR nets those are the outputs of every
BatchNorm but a projection shortcut's, plus the stem's. They are measured in inference mode (BN
running averages) on the first --num_images images of each run's eval split; the std is over all of
a layer's outputs. Top panel: layers in network order; bottom: sorted by magnitude. The paper's
finding: residual nets respond less than plain ones, and deeper ResNets less still. Pre-activation
and bottleneck nets are skipped, as their BatchNorms sit before the convolutions.
"""

import argparse
import pathlib
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from experiments import results
from resnet_jax.config import fields
from resnet_jax.workdir import checkpoints as checkpointing
from resnet_jax.data import pipeline as input_pipeline
from resnet_jax import models

plt = results.plt  # matplotlib with the Agg backend


def trained_variables(workdir) -> dict:
  checkpoints = checkpointing.Checkpoints(pathlib.Path(workdir).resolve(), read_only=True)
  step = checkpoints.latest_step()
  if step is None:
    raise FileNotFoundError(f'{workdir} holds no checkpoint')
  state = checkpoints.restore_as_saved(step, jax.sharding.SingleDeviceSharding(jax.devices()[0]))
  checkpoints.close()
  return {'params': state['params'], 'batch_stats': state['batch_stats']}


def eval_images(dataset: dict, num_images: int) -> np.ndarray:
  config = fields.base_config('resnet20').dataset  # the fields of today's configs, then the run's
  config.update({k: v for k, v in dataset.items() if k in config}, cache=False)  # a part: no cache
  batches = input_pipeline.create_eval_iterator(
      input_pipeline.resolve_data(config), local_batch_size=128
  )
  images = []
  for batch in batches:
    images.append(batch['image'][batch['mask'] > 0])
    if sum(len(i) for i in images) >= num_images:
      break
  return np.concatenate(images)[:num_images]


def response_stds(model: nn.Module, variables: dict, images: np.ndarray) -> list[float]:
  """Std of each BN output after a 3x3 conv, in the order the forward pass meets them."""
  stds = []

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    is_batch_norm = isinstance(context.module, nn.BatchNorm) and context.method_name == '__call__'
    if is_batch_norm and context.module.name != 'projection_bn':
      stds.append(float(jnp.std(out.astype(jnp.float32))))
    return out

  with nn.intercept_methods(record):
    model.apply(variables, jnp.asarray(images), train=False)
  return stds


def figure7(stds_by_run: dict[str, tuple[results.Run, list[float]]], path) -> None:
  colours = results.depth_colours([run for run, _ in stds_by_run.values()])
  fig, (by_layer, by_size) = plt.subplots(2, 1, figsize=(8, 7))
  for name, (run, stds) in stds_by_run.items():
    style = dict(
        color=colours[run.depth],
        linestyle='--' if run.family == 'plain' else '-',
        linewidth=1.2,
        label=f'{results.FAMILY_TITLES[run.family]}-{run.depth}'
        + (f' ({name})' if name != f'{run.family}{run.depth}' else ''),
    )
    by_layer.plot(range(1, len(stds) + 1), stds, **style)
    by_size.plot(range(1, len(stds) + 1), sorted(stds, reverse=True), **style)
  by_layer.set(xlabel='layer index (original order)', ylabel='std')
  by_size.set(xlabel='layer index (sorted by magnitude)', ylabel='std')
  for ax in (by_layer, by_size):
    # A net that failed to train can respond orders of magnitude above the rest.
    ax.set_yscale('log')
    ax.grid(alpha=0.3)
  by_layer.legend(fontsize=8)
  results.save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m experiments.figure7', description=__doc__.split('\n\n')[0]
  )
  parser.add_argument('--root', required=True, help="a sweep's root: one workdir per run")
  parser.add_argument(
      '--runs', help='comma-separated run names (default: every post-activation basic-block run)'
  )
  parser.add_argument('--out', help='the PNG to write (default: ROOT/figure7.png)')
  parser.add_argument('--num_images', type=int, default=512)
  args = parser.parse_args(argv)
  runs = results.load_runs(args.root)
  if args.runs:
    wanted = args.runs.split(',')
    missing = set(wanted) - {r.name for r in runs}
    if missing:
      print(f'error: no run {", ".join(sorted(missing))} in {args.root}', file=sys.stderr)
      return 2
    runs = [r for r in runs if r.name in wanted]
  stds_by_run = {}
  for run in runs:
    spec = models.model_spec(run.config['model']['name'])
    if spec['preact'] or spec['block'] != 'basic':
      print(f'{run.name}: skipped (BatchNorms before the convolutions)')
      continue
    variables = trained_variables(pathlib.Path(args.root) / run.name)
    model = results.build_model(run, num_classes=variables['params']['head']['kernel'].shape[-1])
    stds = response_stds(model, variables, eval_images(run.config['dataset'], args.num_images))
    stds_by_run[run.name] = (run, stds)
    print(
        f'{run.name}: {len(stds)} layers, response std mean {np.mean(stds):.3f}, median'
        f' {np.median(stds):.3f}'
    )
  if not stds_by_run:
    print(f'error: no trained post-activation run in {args.root}', file=sys.stderr)
    return 2
  out = args.out or str(pathlib.Path(args.root) / 'figure7.png')
  figure7(stds_by_run, out)
  print(f'wrote {out}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
