"""Device memory of the evaluation protocols: XLA's plan for each compiled group of views.

    python -m benchmarks.eval_memory [--model resnet50] [--batches 8,64] [--scales 224,640]
        [--json out.json]

For each per-device eval batch and each view group of `10crop` and `multiscale` (resnet_jax/
evaluation.py), the Evaluator's own compiled program is lowered for one device and XLA's memory
plan read (`compiled.memory_analysis()`: temporaries, arguments, outputs), with the default
`forward_batch` (32 crops of 224 px per forward pass) and without it (the whole batch in one pass).
Nothing is run: the figures are the compiler's, on whatever backend JAX picks.
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from resnet_jax.training import evaluation, parallel
from resnet_jax import models
from tests.data_specs import data_spec

MIB = 2**20


def plan(model_name: str, protocol: str, scales, batch: int, forward_batch: int) -> list[dict]:
  model = models.create_model(model_name, num_classes=1000)
  variables = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)), train=False)
  )
  spec = evaluation.EvalSpec(protocol=protocol, scales=tuple(scales), forward_batch=forward_batch)
  dp = parallel.DataParallel(mesh=parallel.make_mesh(jax.devices()[:1]))
  evaluator = evaluation.Evaluator(
      spec,
      model=model,
      data_parallel=dp,
      data=data_spec(
          mean=(0.485, 0.456, 0.406),
          normalisation='per_pixel_mean',
          pixel_mean=np.full((224, 224, 3), 0.45, np.float32),
      ),
  )
  rows = []
  for group in evaluator.groups:
    views = jax.ShapeDtypeStruct((batch, group.count, *group.size, 3), jnp.uint8)
    compiled = evaluator._groups[group.name].lower(variables, views).compile()  # pylint: disable=protected-access
    memory = compiled.memory_analysis()
    rows.append({
        'protocol': protocol,
        'group': group.name,
        'batch_per_device': batch,
        'forward_batch': forward_batch,
        'temp_mib': memory.temp_size_in_bytes / MIB,
        'argument_mib': memory.argument_size_in_bytes / MIB,
        'output_mib': memory.output_size_in_bytes / MIB,
    })
    print(
        f'  {protocol} {group.name} batch {batch} forward_batch {forward_batch}:'
        f" temporaries {rows[-1]['temp_mib']:.0f} MiB, views {rows[-1]['argument_mib']:.0f} MiB"
        ' (with the weights)',
        flush=True,
    )
  return rows


def main():
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument('--model', default='resnet50')
  parser.add_argument('--batches', default='8,64', help='per-device eval batches')
  parser.add_argument('--scales', default='224,640')
  parser.add_argument('--json')
  args = parser.parse_args()
  scales = [int(s) for s in args.scales.split(',')]
  rows = []
  for batch in (int(b) for b in args.batches.split(',')):
    rows += plan(args.model, '10crop', scales, batch, 32)
    rows += plan(args.model, 'multiscale', scales, batch, 32)
    rows += plan(args.model, 'multiscale', scales[-1:], batch, 10**6)  # no chunking: for contrast
  lines = [
      f"{r['protocol']} {r['group']}, {r['batch_per_device']} images per device, forward_batch"
      f" {r['forward_batch']}: temporaries {r['temp_mib']:,.0f} MiB"
      for r in rows
  ]
  common.emit(
      {'benchmark': 'eval_memory', 'model': args.model, 'rows': rows, 'machine': common.machine()},
      '\n'.join(lines),
      args.json,
  )


if __name__ == '__main__':
  main()
