"""What a researcher sees of a run through the real CLI (over 8 devices): the console, the summary,
the curves, the TensorBoard tags, and the best checkpoint kept besides the last."""

import json

import pytest
from tensorboard.backend.event_processing import event_accumulator

from tests.cli import check, read_jsonl, run_main

RUN = [
    '--config=configs/digits.py:resnet8',
    '--config.train.batch_size=32',
    '--config.train.eval_batch_size=128',
    '--config.train.num_steps=40',
    '--config.train.log_every_steps=10',
    '--config.train.eval_every_steps=10',
    '--config.train.checkpoint_every_steps=10',
    '--config.train.keep_checkpoints=1',
    # a learning rate 30x too high for the last 10 steps: the last evaluation is not the best
    '--config.schedule.boundaries=(30,)',
    '--config.schedule.decay_factor=30',
]


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('run')
  data = tmp_path_factory.mktemp('tfds')
  result = check(
      run_main(*RUN, f'--workdir={workdir}', f'--config.dataset.data_dir={data}', devices=8)
  )
  return workdir, result


@pytest.mark.slow
def test_the_console_is_short_lines_and_a_summary_without_library_noise(run):
  workdir, result = run
  lines = result.stdout.splitlines()
  assert result.stderr == '', result.stderr[-2000:]  # no TensorFlow, XLA, TFDS or orbax chatter
  assert all(len(line) <= 160 for line in lines), max(lines, key=len)
  assert lines[0].startswith('Preparing dataset sklearn_digits in')  # a fresh data_dir
  assert lines[1].startswith('resnet8 on sklearn_digits: 40 steps of 32 images on 8 cpu device')
  steps = [line for line in lines if line.startswith('step ')]
  assert [s.split()[1] for s in steps] == ['10/40', '20/40', '30/40', '40/40']
  for line in steps:  # loss, accuracy, learning rate, speed without compilation, time left
    assert all(f' {word} ' in line for word in ('loss', 'acc', 'lr', 'img/s', 'ETA')), line
  evals = [line for line in lines if line.startswith('eval at step ')]
  # 359 images, no multiple of the eval batch (128) or the devices (8): each counted once.
  assert len(evals) == 4 and all(line.endswith(' on 359 images') for line in evals)
  summary = dict(line.split(None, 1) for line in lines[lines.index('') + 1 :])
  for key in (
      'final',
      'best',
      'steps',
      'wall',
      'training',
      'checkpoints',
      'metrics',
      'curves',
      'TensorBoard',
  ):
    assert key in summary, lines
  assert (workdir / 'curves.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


@pytest.mark.slow
def test_the_best_checkpoint_is_kept_besides_the_last_and_eval_reads_it_writing_nothing(run):
  workdir, _ = run
  evals = {r['step']: r for r in read_jsonl(workdir / 'metrics.jsonl') if 'eval_top1_error' in r}
  best = min(evals, key=lambda s: (evals[s]['eval_top1_error'], s))
  assert best != 40  # else this test would not tell the best from the last
  kept = sorted(int(p.name) for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit())
  assert kept == [best, 40]
  before = {p: p.read_bytes() for p in workdir.rglob('*') if p.is_file() and p.name != 'lock.json'}
  # Eval-only with no --config: the config the checkpoint was trained with; it writes nothing.
  result = check(run_main('--mode=eval', f'--workdir={workdir}', '--checkpoint_step=best'))
  after = {p: p.read_bytes() for p in workdir.rglob('*') if p.is_file() and p.name != 'lock.json'}
  assert after == before
  metrics = json.loads(result.stdout.splitlines()[-1])
  assert metrics['step'] == best
  assert metrics['eval_top1_error'] == pytest.approx(evals[best]['eval_top1_error'], abs=1e-9)


def test_tensorboard_groups_the_tags_and_holds_the_config(run):
  workdir, _ = run
  events = event_accumulator.EventAccumulator(str(workdir), size_guidance={'tensors': 0})
  events.Reload()
  tags = set(events.Tags()['tensors'])
  assert {'train/loss', 'train/error', 'train/images_per_second', 'eval/top1_error'} <= tags
  assert 'diagnostics/grad_norm' in tags and 'diagnostics/residual_ratio_stage1_block1' in tags
  assert not any(tag.startswith(('train_', 'eval_')) for tag in tags)
  assert {'config', '_hparams_/session_start_info'} <= tags  # the config as text and hparams
