"""How long a checkpoint holds up training: `Checkpoints.save` of the project's train state.

    python -m benchmarks.checkpoint [--model resnet20 --saves 4 --devices 8] [--json out.json]

Saves are asynchronous: the call returns once the arrays are copied off the devices and the writing
goes on in the background. Reported per save: the blocking time of the call (what the training loop
waits for) and the time until the checkpoint is complete. The first save of a run pays one-time
set-up, so it is reported apart from the median of the others.
"""

import argparse
import tempfile
import time

from benchmarks import common, train_step


def main():
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument('--model', default='resnet20')
  parser.add_argument('--saves', type=int, default=4)
  parser.add_argument(
      '--devices', type=int, help='simulated CPU devices (re-executes with XLA_FLAGS)'
  )
  parser.add_argument('--json')
  args = parser.parse_args()
  train_step.ensure_devices(args.devices, 'benchmarks.checkpoint')
  import jax  # pylint: disable=import-outside-toplevel
  from resnet_jax.workdir import checkpoints as checkpointing  # pylint: disable=import-outside-toplevel
  from resnet_jax.models import stats as model_stats  # pylint: disable=import-outside-toplevel

  step = train_step.ProductStep(train_step.config_for(args.model, batch=8 * jax.device_count()))
  step()
  state = step.data_parallel.to_global(step.state)
  saves = []
  with tempfile.TemporaryDirectory() as workdir:
    checkpoints = checkpointing.Checkpoints(workdir, keep=2)
    for index in range(args.saves):
      start = time.perf_counter()
      checkpoints.save(index, state, {'model': args.model})
      returned = time.perf_counter()
      checkpoints.manager.wait_until_finished()
      saves.append(
          {'blocking_seconds': returned - start, 'complete_seconds': time.perf_counter() - start}
      )
  later = saves[1:] or saves
  result = {
      'benchmark': 'checkpoint',
      'model': args.model,
      'devices': jax.device_count(),
      'saves': saves,
      'arrays': len(jax.tree.leaves(state)),
      'megabytes': model_stats.count(state) * 4 / 1e6,
      'first_blocking_seconds': saves[0]['blocking_seconds'],
      'later_blocking_seconds': common.median([s['blocking_seconds'] for s in later]),
      'later_complete_seconds': common.median([s['complete_seconds'] for s in later]),
      'machine': common.machine(),
  }
  common.emit(
      result,
      f"{args.model} state ({result['arrays']} arrays, {result['megabytes']:.1f} MB) on"
      f" {result['devices']} device(s): first save blocks {result['first_blocking_seconds']:.2f} s,"
      f" later saves {result['later_blocking_seconds']:.2f} s (complete after"
      f" {result['later_complete_seconds']:.2f} s)",
      args.json,
  )


if __name__ == '__main__':
  main()
