"""The CPU convolution backend of a compiled step, chosen by measurement (parallelism.cpu_backend).

Why: XLA's CPU backend runs convolutions either through YNNPACK (its default) or through Eigen, and
which is faster depends on the processor: on an AVX2 AMD EPYC (Zen 3) Eigen runs a ResNet step about
twice as fast, on an AVX-512 Zen 5 YNNPACK is as fast or a little faster (BENCHMARKS.md, "CPU
backend by processor"). Both lose to oneDNN's convolutions (PyTorch's), which models/onednn_conv.py
calls from the step where they can run (x86-64 Linux, one device in one process): on the Zen 5
they ran the step 1.3 times as fast as XLA's best setting (BENCHMARKS.md, "oneDNN convolutions").
A fixed default is wrong on one kind of machine or another, so, in the spirit of
`torch.backends.cudnn.benchmark`, the first time a step of a given signature is compiled on a given
processor and jaxlib, every candidate that can run is compiled and timed for a few steps, the
fastest kept, and the choice cached in a small JSON file (`cache_path()`), so that later runs start
at once.

XLA's two are per-compilation options (`Lowered.compile(compiler_options=...)`, `jax.jit(...,
compiler_options=...)`); oneDNN's is the model's `kernels` field, which Setup sets only from
this choice. Nothing is process-wide, and GPU and TPU compilations see none of it (off the CPU
`lookup` answers 'not a CPU' and `options_for` gives no options; tests/test_cpu_backend.py lowers
the steps for cuda and tpu).
"""

import dataclasses
import functools
import json
import os
import pathlib
import platform
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import jaxlib

from resnet_jax.common.errors import UserError
from resnet_jax.models import onednn

# The candidates, as XLA CPU debug options for one compilation. 'ynnpack' is XLA's own default.
BACKENDS = {
    'ynnpack': {},
    # YNNPACK keeps only the dots; convolutions go to Eigen, threaded over the intra-op pool.
    'eigen': {'xla_cpu_experimental_ynn_fusion_type': 'LIBRARY_FUSION_TYPE_DOT'},
    # The model's convolutions are oneDNN's custom calls (models/onednn_conv.py), XLA's defaults
    # for the rest: one device in one process, whose convolutions oneDNN spreads over the cores.
    'onednn': {},
}
CHOICES = ('auto', *BACKENDS)
DEFAULT = 'ynnpack'
# A launch's environment is more specific than the config (as XLA_FLAGS' device count is): the
# test suite pins a backend so that runs it compares are compiled alike.
ENV_OVERRIDE = 'RESNET_JAX_CPU_BACKEND'
# Another backend replaces XLA's default only when it is clearly faster: two close timings are
# noise, and a choice that flips between runs would change results in the last bits.
MIN_GAIN = 1.05
UNMEASURED = 'XLA default, not measured'  # lookup's answer when nothing is known yet
MEASURE_SECONDS = 10.0  # timed steps (after a warm-up step each), beyond the extra compilation
MAX_ROUNDS = 20  # short steps (the 8x8 digits: 17-37 ms) need no 10 s to tell apart


@dataclasses.dataclass(frozen=True)
class Choice:
  name: str  # a key of BACKENDS, or 'default' off the CPU
  how: str  # 'measured' | 'cached' | 'set' (config or environment) | 'not a CPU'
  seconds: float = 0.0  # spent measuring (compiling the other candidate and timing steps)
  step_seconds: tuple[tuple[str, float], ...] = ()  # measured: each candidate's fastest step

  @property
  def options(self) -> dict[str, Any]:
    return dict(BACKENDS.get(self.name, {}))

  def describe(self) -> str:
    if self.how == 'not a CPU':
      return ''
    text = f'cpu backend {self.name} ({self.how}'
    if self.step_seconds:
      text += ' in {:.1f} s: {}'.format(
          self.seconds, ', '.join(f'{n} {1e3 * s:,.0f} ms/step' for n, s in self.step_seconds)
      )
    return text + ')'


@functools.cache
def processor() -> dict[str, Any]:
  """The CPU as lscpu names it (from /proc/cpuinfo, which lscpu reads): model name, family, model,
  and whether it has AVX-512, the facts that decide which backend wins."""
  fields, flags = {}, set()
  try:
    for line in pathlib.Path('/proc/cpuinfo').read_text().splitlines():
      key, _, value = line.partition(':')
      key = key.strip()
      if key == 'flags':
        flags = set(value.split())
        break
      fields.setdefault(key, value.strip())
  except OSError:  # not Linux
    pass
  return {
      'model_name': fields.get('model name') or platform.processor() or platform.machine(),
      'family': fields.get('cpu family', ''),
      'model': fields.get('model', ''),
      'avx512': 'avx512f' in flags,
      'cores': os.cpu_count(),
  }


def describe_processor() -> str:
  p = processor()
  family = f', family {p["family"]} model {p["model"]}' if p['family'] else ''
  return (
      f'{p["model_name"]}{family}, {"AVX-512" if p["avx512"] else "no AVX-512"}, {p["cores"]} cores'
  )


def cache_path() -> pathlib.Path:
  root = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return pathlib.Path(root) / 'resnet_jax' / 'cpu_backend.json'


def step_signature(run, *, devices: int, processes: int) -> dict[str, Any]:
  """What decides which backend runs a run's (run.Run) train step faster: the cache's key."""
  return {
      'model': dict(run.model.fields),
      'image_shape': list(run.dataset.image_shape),
      'num_classes': run.dataset.num_classes,
      'batch': run.batch.size,
      'devices': devices,
      'processes': processes,
      'mode': run.parallelism.mode,
      'batch_norm': run.parallelism.batch_norm,
      'diagnostics': run.loop.log_diagnostics,
  }


def kernels(name: str) -> str:
  """The model's `kernels` for a backend: whose kernels its convolutions call."""
  return 'onednn' if name == 'onednn' else 'xla'


def onednn_refusal(signature: dict[str, Any]) -> str | None:
  """Why a step of `signature` cannot run on oneDNN's convolutions here, or None when it can."""
  if reason := onednn.missing():  # first: then the split could not have been one device
    return reason
  if signature['devices'] > 1 or signature['processes'] > 1:
    return (
        f"runs on one CPU device in one process, not {signature['devices']} device(s) in"
        f" {signature['processes']} process(es)"
    )
  if signature['model'].get('conv_kernel_grad', 'xla') != 'xla':
    return 'replaces every convolution, so model.conv_kernel_grad must be xla'
  return onednn.unavailable()


def onednn_may_run(configured: str, *, processes: int, conv_kernel_grad: str) -> bool:
  """Whether a run may end up on oneDNN (backend auto or onednn, one process, XLA's kernel
  gradients, oneDNN here): the CPU split asks before JAX starts (parallel.auto_cpu_devices), so
  only what `onednn_refusal` can know without a device."""
  return (
      requested(configured) in ('auto', 'onednn')
      and processes == 1
      and conv_kernel_grad == 'xla'
      and onednn.missing() is None
  )


def candidates(signature: dict[str, Any]) -> tuple[str, ...]:
  """The backends a step of `signature` can run on in this process."""
  return tuple(n for n in BACKENDS if n != 'onednn' or onednn_refusal(signature) is None)


def cache_key(signature: dict[str, Any]) -> str:
  return json.dumps(
      {
          'processor': processor(),
          'jaxlib': jaxlib.__version__,
          'step': signature,
          'candidates': candidates(signature),  # installing oneDNN makes the choice again
      },
      sort_keys=True,
  )


def _read_cache(path: pathlib.Path) -> dict[str, Any]:
  try:
    entries = json.loads(path.read_text())
  except (OSError, ValueError):  # none yet, or unreadable: measure again
    return {}
  return entries if isinstance(entries, dict) else {}


def _write_cache(path: pathlib.Path, key: str, entry: dict[str, Any]) -> None:
  """Adds one entry (atomically: a run reading the file never sees half of it). A cache that
  cannot be written costs a measurement next time, nothing else."""
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    entries = _read_cache(path)
    entries[key] = entry
    tmp = path.with_name(f'{path.name}.{os.getpid()}.tmp')
    tmp.write_text(json.dumps(entries, indent=1, sort_keys=True))
    os.replace(tmp, path)
  except OSError:
    pass


def requested(configured: str) -> str:
  """The backend asked for: the environment's, else the config's (run.py checked that one)."""
  name = os.environ.get(ENV_OVERRIDE) or configured
  if name not in CHOICES:
    raise UserError(
        f'{ENV_OVERRIDE}={name!r} is not one of {", ".join(CHOICES)}; unset it or set one of'
        ' those (--config.parallelism.cpu_backend sets the same per run)'
    )
  return name


def lookup(configured: str, signature: dict[str, Any]) -> Choice:
  """The choice without measuring (eval-only, predict, before training compiles its step): the
  one asked for, else the cached one, else XLA's default."""
  name = requested(configured)
  if jax.default_backend() != 'cpu':
    return Choice('default', 'not a CPU')
  if name == 'onednn' and (refusal := onednn_refusal(signature)):
    raise UserError(
        f'--config.parallelism.cpu_backend=onednn {refusal}; set'
        ' --config.parallelism.cpu_devices=1 (and one process), or cpu_backend=auto'
        if 'device' in refusal
        else f'--config.parallelism.cpu_backend=onednn: {refusal}; or set cpu_backend=auto'
    )
  if name in BACKENDS:
    return Choice(name, 'set')
  cached = _read_cache(cache_path()).get(cache_key(signature)) or {}
  if cached.get('backend') in candidates(signature):
    return Choice(cached['backend'], 'cached')
  return Choice(DEFAULT, UNMEASURED)


def _time_steps(compiled: dict[str, Callable], state, batch) -> dict[str, float]:
  """The fastest step of each candidate, in seconds (the least disturbed by the machine's other
  work, which only ever adds time), the candidates interleaved (A B, B A, ...) so that a
  change in the machine's load hits them alike: rounds until MEASURE_SECONDS are spent or
  MAX_ROUNDS are done, at least one (a fixed two in a multi-process job, whose processes must run
  the same steps). Each runs on its own copy of `state` (the steps donate it); the caller's state
  is untouched."""
  copy = lambda tree: jax.tree.map(jnp.copy, tree)
  states, times = {name: copy(state) for name in compiled}, {name: [] for name in compiled}

  def one_step(name):
    start = time.perf_counter()
    states[name], metrics = compiled[name](states[name], batch)
    jax.block_until_ready((states[name], metrics))
    return time.perf_counter() - start

  spent = sum(one_step(name) for name in compiled)  # warm-up: a program's first call allocates
  order, rounds = list(compiled), 0
  alone = jax.process_count() == 1
  while (alone and spent < MEASURE_SECONDS and rounds < MAX_ROUNDS) or rounds < (1 if alone else 2):
    for name in order:
      seconds = one_step(name)
      times[name].append(seconds)
      spent += seconds
    order.reverse()
    rounds += 1
  return {name: min(t) for name, t in times.items()}


def choose(
    lower: Callable[[str], Any], state, batch, *, configured: str, signature: dict[str, Any]
) -> tuple[Choice, Any]:
  """(the choice, the step compiled with it) for the step that `lower(kernels)` lowers with the
  model's convolutions on 'xla' or 'onednn' kernels (`kernels(name)`).

  `state` and `batch` are real inputs of the step, used (on copies) only when measuring.
  """
  choice = lookup(configured, signature)
  if jax.process_count() > 1 and choice.how != 'set':  # the same candidates on every process:
    agreed = _agree({'backend': choice.name} if choice.how == 'cached' else None)  # process 0's
    choice = Choice(agreed['backend'], 'cached') if agreed else Choice(DEFAULT, UNMEASURED)
  if choice.how != UNMEASURED:
    return choice, lower(kernels(choice.name)).compile(compiler_options=choice.options or None)
  start = time.perf_counter()
  names = candidates(signature)
  lowered = {c: lower(c) for c in {kernels(n) for n in names}}
  compiled = {n: lowered[kernels(n)].compile(compiler_options=BACKENDS[n] or None) for n in names}
  step_seconds = _time_steps(compiled, state, batch)
  fastest = min(step_seconds, key=step_seconds.get)
  if step_seconds[DEFAULT] < MIN_GAIN * step_seconds[fastest]:
    fastest = DEFAULT
  if jax.process_count() > 1:
    fastest = _agree({'backend': fastest})['backend']
  choice = Choice(
      fastest,
      'measured',
      seconds=time.perf_counter() - start,
      step_seconds=tuple(sorted(step_seconds.items(), key=lambda item: item[1])),
  )
  if jax.process_index() == 0:
    _write_cache(
        cache_path(),
        cache_key(signature),
        {'backend': fastest, 'step_seconds': step_seconds, 'when': time.time()},
    )
  return choice, compiled[fastest]


def _agree(entry: dict | None) -> dict | None:
  """Process 0's cache entry (or decision), on every process."""
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

  names = list(BACKENDS)
  index = names.index(entry['backend']) if entry and entry.get('backend') in BACKENDS else -1
  index = int(multihost_utils.broadcast_one_to_all(jnp.int32(index)))
  return {'backend': names[index]} if index >= 0 else None


def options_for(choice_name: str) -> dict[str, Any] | None:
  """The compiler options of a step compiled for the chosen backend: none off the CPU."""
  if jax.default_backend() != 'cpu':
    return None
  return BACKENDS.get(choice_name) or None
