"""What every benchmark shares: timing, the machine's matmul peak, XLA's FLOP count, JSON output.

The machine is shared and noisy, so figures that are compared are timed *interleaved*: a call of
A, one of B, then B, A..., round after round. Each figure is the median of its calls, and each ratio
is the median of call-by-call ratios within a round (with quartiles), so a slow minute hits both
sides alike and the ratio holds.
"""

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Callable

import jax
import jax.numpy as jnp


def median(values) -> float:
  return float(statistics.median(values))


def compile_timed(jitted, *args, compiler_options: dict | None = None):
  """(compiled, seconds to lower + compile, XLA's FLOP count per call or None). `compiler_options`
  are XLA debug options for this compilation only (jax's `Lowered.compile(compiler_options=...)`).
  """
  start = time.perf_counter()
  compiled = jitted.lower(*args).compile(compiler_options=compiler_options)
  seconds = time.perf_counter() - start
  return compiled, seconds, xla_flops(compiled)


def xla_flops(compiled) -> float | None:
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):  # one dict per program in older jax versions
    analysis = analysis[0] if analysis else None
  flops = (analysis or {}).get('flops')
  return float(flops) if flops and flops > 0 else None


def interleaved(
    runs: dict[str, Callable[[], None]], *, rounds: int, steps: int = 1, warmup: int = 2
) -> dict[str, list[float]]:
  """Seconds per call of each `run` (which must block until its device work is done), timed in
  `rounds` rounds of `steps` calls of each run, after `warmup` untimed calls of each. Odd rounds go
  in reverse order, so a trend in the machine's load within a round favours no run."""
  for name, run in runs.items():
    start = time.perf_counter()
    for _ in range(warmup):
      run()
    print(
        f'  warm-up {name}: {(time.perf_counter() - start) / max(warmup, 1):.2f} s a call',
        file=sys.stderr,
        flush=True,
    )
  times = {name: [] for name in runs}
  names = list(runs)
  for index in range(rounds):
    for name in (names if index % 2 == 0 else names[::-1]):
      for _ in range(steps):
        start = time.perf_counter()
        runs[name]()
        times[name].append(time.perf_counter() - start)
    print(
        f'  round {index + 1}/{rounds}: ' + ', '.join(f'{n} {times[n][-1]:.2f} s' for n in names),
        file=sys.stderr,
        flush=True,
    )
  return times


def paired_ratio(
    times: dict[str, list[float]],
    name: str,
    reference: str,
    *,
    per_call: tuple[float, float] = (1, 1),
) -> dict:
  """Throughput of `name` over `reference`, as the median of call-by-call ratios (call i of each was
  timed within the same round, so the load they saw was about the same), with its quartiles.
  `per_call` = (work per call of name, of reference), e.g. images."""
  ratios = sorted(
      (per_call[0] / a) / (per_call[1] / b) for a, b in zip(times[name], times[reference])
  )
  quartile = lambda q: ratios[min(len(ratios) - 1, round(q * (len(ratios) - 1)))]
  return {
      'median': median(ratios),
      'q25': quartile(0.25),
      'q75': quartile(0.75),
      'pairs': len(ratios),
  }


def matmul_peak_run(n: int = 4096):
  """(run, FLOPs per run): an n x n float32 matmul under jit, the machine's practical peak."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  matmul = jax.jit(jnp.matmul)
  matmul(a, b).block_until_ready()
  return (lambda: matmul(a, b).block_until_ready()), 2.0 * n**3


def host_yardstick(n: int = 1024):
  """A numpy (OpenBLAS) matmul: the CPU share this process gets, untouched by XLA's flags, so runs
  under different XLA_FLAGS (separate processes) can be compared through it."""
  import numpy as np  # pylint: disable=import-outside-toplevel

  a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
  return lambda: a @ a


def load_average() -> list[float]:
  return [round(x, 2) for x in os.getloadavg()]


def machine() -> dict:
  """The facts a reader needs to compare figures: CPU, cores, memory, load, versions, XLA flags."""
  cpu = next(
      (
          line.split(':', 1)[1].strip()
          for line in open('/proc/cpuinfo')
          if line.startswith('model name')
      ),
      platform.processor(),
  )
  flags = next(
      (line.split(':', 1)[1].split() for line in open('/proc/cpuinfo') if line.startswith('flags')),
      [],
  )
  mem_kb = next(
      int(line.split()[1]) for line in open('/proc/meminfo') if line.startswith('MemTotal')
  )
  import flax
  import jaxlib
  import optax  # pylint: disable=g-import-not-at-top,import-outside-toplevel

  return {
      'cpu': cpu,
      'nproc': os.cpu_count(),
      'simd': [f for f in flags if f.startswith(('avx', 'fma', 'amx'))],
      'memory_gib': round(mem_kb / 2**20, 1),
      'load_average': load_average(),
      'jax': jax.__version__,
      'jaxlib': jaxlib.__version__,
      'flax': flax.__version__,
      'optax': optax.__version__,
      'devices': f'{jax.device_count()} x {jax.devices()[0].platform}',
      'xla_flags': os.environ.get('XLA_FLAGS', ''),
      'python': platform.python_version(),
  }


def emit(result: dict, line: str, json_path: str | None) -> None:
  """The readable line on stdout, then the JSON (to a file if asked, else on the next line)."""
  print(line, flush=True)
  text = json.dumps(result, indent=1, sort_keys=True, default=str)
  if json_path:
    with open(json_path, 'w') as f:
      f.write(text + '\n')
  else:
    print('JSON ' + json.dumps(result, sort_keys=True, default=str), flush=True)


def run_module(module: str, args: list[str], *, xla_flags: str = '', timeout: float = 3600) -> dict:
  """Runs `python -m module args --json tmp` in a fresh process (XLA flags and peak memory are
  per process) and returns its JSON; stderr is passed through for the reader."""
  import tempfile  # pylint: disable=import-outside-toplevel

  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  env['XLA_FLAGS'] = xla_flags
  with tempfile.NamedTemporaryFile(suffix='.json') as out:
    subprocess.run(
        [sys.executable, '-m', module, *args, '--json', out.name],
        env=env,
        check=True,
        timeout=timeout,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    with open(out.name) as f:
      return json.load(f)
