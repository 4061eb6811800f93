"""One run's training curves: `python -m experiments.plot --workdir DIR` writes DIR/curves.png.

The figure is resnet_jax/workdir/curves.py's, the one every training run writes at its end.
"""

import argparse
import sys

from resnet_jax.common import errors
from resnet_jax.workdir import curves


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m experiments.plot', description=__doc__.split('\n\n')[0]
  )
  parser.add_argument('--workdir', required=True, help="a run's workdir (holding metrics.jsonl)")
  args = parser.parse_args(argv)
  return errors.exit_status(lambda: print(f'wrote {curves.plot_run(args.workdir)}'))


if __name__ == '__main__':
  sys.exit(main())
