"""The TPU pod launcher and the SLURM script generator: the commands they print, run and quote."""

import json
import os
import pathlib
import re
import shlex
import subprocess
import sys
import time

import pytest

from experiments import slurm_job, tpu_pod

REPO = pathlib.Path(__file__).resolve().parents[1]
TRICKY = (  # spaces, single and double quotes: must reach main as one flag
    '--config.name=it\'s "a" test'
)
TPU_ARGS = [
    '--tpu',
    'my-pod',
    '--zone',
    'us-central2-b',
    '--config',
    'configs/imagenet.py:resnet50,modern',
    '--workdir',
    'gs://bucket/runs/r50',
]
SLURM_ARGS = [
    '--nodes',
    '4',
    '--gpus_per_node',
    '8',
    '--config',
    'configs/imagenet.py:resnet50',
    '--workdir',
    '/shared/runs/r50',
]


def printed_commands(capsys, *args) -> list[list[str]]:
  assert tpu_pod.main([*TPU_ARGS, *args]) == 0
  lines = capsys.readouterr().out.splitlines()
  return [shlex.split(line) for line in lines if not line.startswith('#')]


def remote_command(argv: list[str]) -> str:
  return argv[argv.index('--command') + 1]


def fake_program(path: pathlib.Path, record: pathlib.Path) -> None:
  """A stand-in executable: records its arguments and JAX_LOCAL_DEVICE_IDS as JSON, runs nothing."""
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(
      f'#!{sys.executable}\nimport json, os, sys\n'
      f'open({str(record)!r}, "w").write(json.dumps({{"argv": sys.argv[1:], '
      '"ids": os.environ.get("JAX_LOCAL_DEVICE_IDS")}))\n'
  )
  path.chmod(0o755)


def read_record(record: pathlib.Path, timeout: float = 5.0) -> dict:
  deadline = time.monotonic() + timeout
  while not (record.exists() and record.read_text()):
    assert time.monotonic() < deadline, f'{record} was not written'
    time.sleep(0.02)
  return json.loads(record.read_text())


# ---------------------------------------------------------------- TPU pod


def test_tpu_commands_use_the_right_gcloud_verbs_on_every_worker(capsys):
  commands = printed_commands(
      capsys,
      '--project',
      'p',
      '--tpu_create',
      '--accelerator_type',
      'v4-32',
      '--runtime_version',
      'tpu-ubuntu2204-base',
      '--setup',
  )
  assert [c[:5] for c in commands] == [
      ['gcloud', 'compute', 'tpus', 'tpu-vm', 'create'],
      ['git', '-C', str(REPO), 'archive', '--format=tar.gz'],
      ['gcloud', 'compute', 'tpus', 'tpu-vm', 'scp'],
      ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh'],
      ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh'],
  ]
  create, archive, scp, install, train = commands
  # The archive goes to a private directory of its own, not a predictable path under /tmp.
  tarball = pathlib.Path(archive[5].removeprefix('--output='))
  assert scp[5] == str(tarball) and tarball.parent.stat().st_mode & 0o077 == 0
  assert create[5:] == [
      'my-pod',
      '--zone',
      'us-central2-b',
      '--project',
      'p',
      '--accelerator-type',
      'v4-32',
      '--version',
      'tpu-ubuntu2204-base',
  ]
  for command in (scp, install, train):
    assert '--worker=all' in command and command[command.index('--zone') + 1] == 'us-central2-b'
  assert scp[6] == 'my-pod:resnet_jax.tar.gz'
  assert '--distributed=auto' in remote_command(train)
  assert '--coordinator_address' not in remote_command(train)  # a TPU pod is auto-detected


def test_tpu_without_setup_only_trains(capsys):
  [train] = printed_commands(capsys)
  assert train[4:6] == ['ssh', 'my-pod'] and 'nohup' in remote_command(train)


def test_jax_tpu_pin_matches_requirements(capsys):
  pinned = re.search(r'^jax==(\S+)', (REPO / 'requirements.txt').read_text(), re.MULTILINE).group(1)
  install = remote_command(printed_commands(capsys, '--setup')[-2])
  assert f'"jax[tpu]=={pinned}"' in install and 'pip install -q -r requirements.txt' in install


@pytest.mark.parametrize('foreground', [False, True])
def test_tpu_override_with_quotes_reaches_main_intact(capsys, tmp_path, foreground):
  """Runs the printed remote command in a real shell, with a fake venv python in a fake home."""
  commands = printed_commands(
      capsys,
      *(['--foreground'] if foreground else []),
      '--override',
      '--config.train.batch_size=1024',
      TRICKY,
  )
  record = tmp_path / 'argv.json'
  fake_program(tmp_path / 'resnet_jax' / '.venv' / 'bin' / 'python', record)
  shell = subprocess.run(
      ['bash', '-c', remote_command(commands[-1])],
      env={**os.environ, 'HOME': str(tmp_path)},
      capture_output=True,
      text=True,
      timeout=10,
  )
  assert shell.returncode == 0, shell.stderr
  assert read_record(record)['argv'] == [
      '-m',
      'resnet_jax.main',
      '--config',
      'configs/imagenet.py:resnet50,modern',
      '--workdir',
      'gs://bucket/runs/r50',
      '--distributed=auto',
      '--config.train.batch_size=1024',
      TRICKY,
  ]
  assert ('log: ~/resnet_jax.log' in shell.stdout) != foreground


def test_tpu_run_executes_in_order_and_stops_at_first_failure(capsys):
  calls = []

  def runner(argv):
    calls.append(argv)
    return subprocess.CompletedProcess(argv, returncode=3 if len(calls) == 2 else 0)

  printed = printed_commands(capsys, '--setup')
  assert tpu_pod.main([*TPU_ARGS, '--setup', '--run'], runner=runner) == 3
  # git archive ran, scp failed, nothing after it (each plan packs into its own private directory)
  assert [c[:5] for c in calls] == [c[:5] for c in printed[:2]]
  error = capsys.readouterr().err.strip().splitlines()[-1]
  assert error == 'error: step 2/4 failed with exit status 3: Copy it to every worker.'


def test_tpu_run_all_steps_succeed_and_missing_gcloud_is_one_line(capsys):
  calls = []
  ok = lambda argv: calls.append(argv) or subprocess.CompletedProcess(argv, 0)
  assert tpu_pod.main([*TPU_ARGS, '--setup', '--run'], runner=ok) == 0 and len(calls) == 4

  def missing(argv):
    raise FileNotFoundError(argv[0])

  capsys.readouterr()
  assert tpu_pod.main([*TPU_ARGS, '--run'], runner=missing) == 127
  assert capsys.readouterr().err.splitlines()[-1].startswith('error: gcloud not found')


def assert_one_line_error(capsys, main, args, message):
  with pytest.raises(SystemExit) as exit_info:
    main(args)
  assert exit_info.value.code == 2
  [line] = capsys.readouterr().err.splitlines()
  assert line.startswith('error: ') and message in line


@pytest.mark.parametrize(
    'args, message',
    [
        (TPU_ARGS[:-2], 'the following arguments are required: --workdir'),
        ([*TPU_ARGS, '--tpu_create'], '--tpu_create needs --accelerator_type'),
        ([*TPU_ARGS, '--override', '--workdir=/tmp/x'], '--workdir is set by the launcher'),
        ([*TPU_ARGS, '--override', 'batch_size=3'], "override 'batch_size=3' is not a flag"),
        (
            [*TPU_ARGS[:-4], '--config', 'configs/nope.py:x', *TPU_ARGS[-2:]],
            'no config file configs/nope.py',
        ),
    ],
)
def test_tpu_bad_input_is_one_line_error(capsys, args, message):
  assert_one_line_error(capsys, tpu_pod.main, args, message)


def test_tpu_local_workdir_warns(capsys):
  assert tpu_pod.main([*TPU_ARGS[:-1], 'runs/local']) == 0
  assert capsys.readouterr().err.startswith('warning: workdir runs/local is not on GCS')


# ---------------------------------------------------------------- SLURM


def generated_script(capsys, *args) -> str:
  assert slurm_job.main([*SLURM_ARGS, *args]) == 0
  return capsys.readouterr().out


def sbatch_lines(script: str) -> list[str]:
  return [line for line in script.splitlines() if line.startswith('#SBATCH')]


@pytest.mark.parametrize('tasks_per, tasks, cpus', [('gpu', 8, 8), ('node', 1, 64)])
def test_sbatch_lines_for_both_task_layouts(capsys, tmp_path, tasks_per, tasks, cpus):
  script = generated_script(capsys, '--tasks_per', tasks_per)
  assert sbatch_lines(script) == [
      '#SBATCH --job-name=resnet_jax',
      '#SBATCH --nodes=4',
      f'#SBATCH --ntasks-per-node={tasks}',
      '#SBATCH --gpus-per-node=8',
      f'#SBATCH --cpus-per-task={cpus}',
      '#SBATCH --output=%x-%j.out',
  ]
  assert script.startswith('#!/bin/bash\n') and 'set -euo pipefail' in script
  path = tmp_path / 'job.sbatch'
  path.write_text(script)
  syntax = subprocess.run(['bash', '-n', str(path)], capture_output=True, text=True)
  assert syntax.returncode == 0, syntax.stderr


def test_generator_changes_only_the_marked_lines_of_the_template(capsys):
  template = slurm_job.TEMPLATE.read_text().splitlines()
  script = generated_script(capsys, '--override', TRICKY).splitlines()
  assert len(script) == len(template)
  changed = [(old, new) for old, new in zip(template, script) if old != new]
  assert [new for _, new in changed] == [
      '#SBATCH --nodes=4',
      'CONFIG=configs/imagenet.py:resnet50',
      'WORKDIR=/shared/runs/r50',
      f'EXTRA_ARGS=({shlex.quote(TRICKY)})',
  ]
  with pytest.raises(ValueError, match='exactly one line'):
    slurm_job.render(
        nodes=1,
        gpus_per_node=1,
        tasks_per='gpu',
        cpus_per_gpu=1,
        config='c',
        workdir='w',
        override=[],
        template='#!/bin/bash\n',
    )


def run_sbatch_script(tmp_path, script: str, *args, env: dict) -> subprocess.CompletedProcess:
  """Runs a batch script as SLURM would start it, with a fake srun that records its arguments."""
  record = tmp_path / 'srun.json'
  fake_program(tmp_path / 'bin' / 'srun', record)
  path = tmp_path / 'job.sbatch'
  path.write_text(script)
  result = subprocess.run(
      ['bash', str(path), *args],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=10,
      env={**os.environ, 'PATH': f'{tmp_path / "bin"}:{os.environ["PATH"]}', **env},
  )
  result.record = read_record(record) if result.returncode == 0 else None
  return result


@pytest.mark.parametrize(
    'tasks_per, env, ids',
    [
        ('gpu', {'SLURM_NTASKS_PER_NODE': '8', 'SLURM_GPUS_PER_NODE': '8'}, None),
        ('node', {'SLURM_NTASKS_PER_NODE': '1', 'SLURM_GPUS_PER_NODE': 'a100:4'}, '0,1,2,3'),
    ],
)
def test_generated_script_starts_srun_with_quoted_overrides(capsys, tmp_path, tasks_per, env, ids):
  script = generated_script(capsys, '--tasks_per', tasks_per, '--override', TRICKY)
  result = run_sbatch_script(tmp_path, script, '--config.train.num_epochs=1', env=env)
  assert result.returncode == 0, result.stderr
  assert result.record == {
      'ids': ids,
      'argv': [
          '--gpu-bind=none',
          '--kill-on-bad-exit=1',
          '.venv/bin/python',
          '-m',
          'resnet_jax.main',
          '--config',
          'configs/imagenet.py:resnet50',
          '--workdir',
          '/shared/runs/r50',
          '--distributed=auto',
          TRICKY,
          '--config.train.num_epochs=1',
      ],
  }


def test_template_takes_config_and_workdir_from_the_environment(tmp_path):
  template = slurm_job.TEMPLATE.read_text()
  env = {'CONFIG': 'configs/cifar10.py:resnet56', 'WORKDIR': '/shared/r56', 'PYTHON': 'python3'}
  result = run_sbatch_script(tmp_path, template, TRICKY, env=env)
  assert result.returncode == 0, result.stderr
  assert result.record['argv'][2:] == [
      'python3',
      '-m',
      'resnet_jax.main',
      '--config',
      env['CONFIG'],
      '--workdir',
      env['WORKDIR'],
      '--distributed=auto',
      TRICKY,
  ]
  missing = run_sbatch_script(tmp_path, template, env={'CONFIG': '', 'WORKDIR': '/shared/r56'})
  assert missing.returncode != 0 and 'set CONFIG, e.g. CONFIG=configs/imagenet.py' in missing.stderr


@pytest.mark.parametrize(
    'args, message',
    [
        (['--nodes', '0', *SLURM_ARGS[2:]], '--nodes must be at least 1, got 0'),
        (SLURM_ARGS[:-2], 'the following arguments are required: --workdir'),
        ([*SLURM_ARGS, '--tasks_per', 'socket'], "argument --tasks_per: invalid choice: 'socket'"),
        (
            [*SLURM_ARGS, '--override', '--config=configs/digits.py'],
            '--config is set by the launcher',
        ),
    ],
)
def test_slurm_bad_input_is_one_line_error(capsys, args, message):
  assert_one_line_error(capsys, slurm_job.main, args, message)
