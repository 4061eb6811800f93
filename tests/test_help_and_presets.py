"""`--help` and `--list_presets`: status 0, no --config or --workdir needed."""

from tests.cli import check, run_main


def test_help_exits_0_and_points_at_the_config_fields():
  result = check(run_main('--help', devices=1, timeout=120))
  assert (
      'resnet_jax/config/fields.py' in result.stdout
      and '--config.<section>.<field>=value' in result.stdout
  )
  assert '--list_presets' in result.stdout and '--workdir' in result.stdout
  assert '--verbosity=0' in result.stdout  # the libraries' logs, off by default


def test_list_presets_shows_the_zoo_and_the_config_files():
  out = check(run_main('--list_presets', devices=1, timeout=120)).stdout
  resnet56 = next(line for line in out.splitlines() if line.split()[:1] == ['resnet56'])
  assert resnet56.split() == ['resnet56', '56', 'basic', 'identity', '32x32x3', '853,018']
  assert (
      'configs/cifar10.py:MODEL' in out and 'configs/imagenet.py:MODEL[,torchvision|,modern]' in out
  )


def test_missing_required_flags_are_one_line():
  result = run_main('--config=configs/digits.py:resnet8', devices=1, timeout=120)
  assert (
      result.returncode == 2
      and result.stderr.strip() == 'error: --workdir must be given (see --help)'
  )
