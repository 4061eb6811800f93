"""Each benchmark CLI runs a step or two on a tiny model and writes JSON that the table reads.

About a minute on the idle 2-core machine (each CLI compiles its own small programs); the figures
themselves come from `python -m benchmarks.run_all`, not from tests.
"""

import importlib.util
import json
import math
import pathlib
import subprocess
import sys

import pytest

from benchmarks import checkpoint, input_pipeline, memory, run_all, sharding, train_loop, train_step


def run_cli(module, monkeypatch, tmp_path, *args) -> dict:
  out = tmp_path / f'{module.__name__}.json'
  monkeypatch.setattr(sys, 'argv', [module.__name__, *args, '--json', str(out)])
  module.main()
  return json.loads(out.read_text())


@pytest.mark.slow
def test_every_benchmark_cli_writes_json(monkeypatch, tmp_path):
  results = {
      'resnet20_levers': run_cli(
          train_step,
          monkeypatch,
          tmp_path,
          '--model',
          'resnet8',
          '--batch',
          '8',
          '--variants',
          'no_diagnostics+async2',
          '--baseline_batch',
          '8',
          '--rounds',
          '1',
          '--peak_size',
          '256',
      ),
      'sharding': run_cli(
          sharding,
          monkeypatch,
          tmp_path,
          '--model',
          'resnet8',
          '--batch',
          '8',
          '--devices',
          '8',
          '--modes',
          'jit',
          '--rounds',
          '1',
      ),
      'input_pipeline': run_cli(
          input_pipeline,
          monkeypatch,
          tmp_path,
          '--style',
          'cifar',
          '--cifar_batch',
          '8',
          '--cifar_step_model',
          'resnet8',
          '--batches',
          '2',
          '--windows',
          '1',
          '--step_calls',
          '1',
      ),
      'train_loop': run_cli(
          train_loop,
          monkeypatch,
          tmp_path,
          '--model',
          'resnet8',
          '--batch',
          '8',
          '--steps',
          '3',
          '--log_every',
          '1',
          '--checkpoint_every',
          '3',
          '--loop_runs',
          '1',
          '--step_calls',
          '1',
      ),
      'memory': run_cli(memory, monkeypatch, tmp_path, '--cases', 'resnet8:8'),
      'checkpoint': run_cli(
          checkpoint, monkeypatch, tmp_path, '--model', 'resnet8', '--saves', '2'
      ),
  }
  step = results['resnet20_levers']
  assert [v['variant'] for v in step['variants']] == ['no_diagnostics+async2']
  assert all(
      v['images_per_second'] > 0 and v['fraction_of_peak'] > 0
      for v in step['variants'] + [step['baseline']]
  )
  assert step['variants'][0]['ratio_to_baseline']['median'] > 0
  sharded = results['sharding']  # not `sharding`: that is the benchmark's module
  # The process really had the 8 devices, and timed the step on 1 of them and on all 8 (--meshes 1).
  assert sharded['devices'] == 8 and sharded['machine']['devices'].startswith('8 x ')
  assert [r['name'] for r in sharded['results']] == ['1_device', '8_devices_jit']
  assert all(r['step_seconds'] > 0 and r['images_per_second'] > 0 for r in sharded['results'])
  # The overhead is the sharded run's against the 1-device one: it alone has one, from one round.
  one_device, eight_devices = sharded['results']
  assert 'overhead' not in one_device and 'ratio_to_1_device' not in one_device
  ratio = eight_devices['ratio_to_1_device']
  assert ratio['pairs'] == 1 and 0 < ratio['q25'] <= ratio['median'] <= ratio['q75'] < math.inf
  assert math.isfinite(eight_devices['overhead'])
  assert eight_devices['overhead'] == pytest.approx(1 / ratio['median'] - 1)
  assert results['input_pipeline']['results'][0]['pipeline_images_per_second'] > 0
  assert results['memory']['results'][0]['peak_rss_mib'] > 0
  assert (
      0
      < results['checkpoint']['later_blocking_seconds']
      <= results['checkpoint']['later_complete_seconds']
  )
  table = run_all.markdown(results)
  assert 'resnet8 no_diagnostics+async2' in table and 'sharding overhead' in table


@pytest.mark.parametrize(
    'module,message',
    [
        ('benchmarks.pytorch_reference', 'error: PyTorch is not importable; install'),
        (
            'benchmarks.reference_parity',
            'error: PyTorch and torchvision are not importable here; run `make parity`',
        ),
    ],
)
def test_pytorch_benchmarks_without_pytorch_say_how_to_get_it(module, message):
  if importlib.util.find_spec('torch') is not None:
    pytest.skip('PyTorch is installed here')
  result = subprocess.run(
      [sys.executable, '-m', module],
      capture_output=True,
      text=True,
      cwd=pathlib.Path(__file__).parents[1],
  )
  assert result.returncode == 1 and result.stderr.strip().startswith(message)
