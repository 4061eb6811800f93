"""Data parallelism: the device mesh, where state and batches live, and the compiled steps.

Two modes, the same results (tests/test_parallel.py):
  * 'jit' (default, the pjit path): one program over global arrays. The batch is split along the
    mesh's 'data' axis, the state is replicated, and XLA inserts the all-reduces; BatchNorm
    statistics then cover the whole global batch. Runs unchanged on one CPU, a GPU node
    or a TPU pod.
  * 'pmap': the classic replicated step; each device holds a copy of the state and gradients are
    averaged over the named axis.
BatchNorm statistics are 'global' (synchronised over the global batch) or 'per_device' (each device
normalises its own slice, as the paper's per-GPU BN; running averages are then averaged).
"""

import functools
import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = 'data'
MODES = ('jit', 'pmap')
BATCH_NORMS = ('global', 'per_device')


# Inputs at least this many pixels on a side are split over CPU_SPLIT devices by default: on 8x8
# digits a split is slower (too little work per device), at 28x28 and 32x32 it is x1.1-2.8 faster
# on every CPU measured (BENCHMARKS.md, "CPU backend and device split by processor"). ImageNet-size
# inputs (from AUTO_LARGE_SIDE up) are split in 2 instead: ResNet-50 at 224 px ran fastest on 2
# devices on the Zen 3 (x2.04 one YNNPACK device; 8 on Eigen x2.02, on YNNPACK x1.66) and on the
# Zen 4 (x1.25; 8 devices x0.99). Nothing was measured between 32 and 224 pixels.
AUTO_MIN_SIDE = 16
AUTO_LARGE_SIDE = 112
CPU_SPLIT = 8
LARGE_SPLIT = 2
# What split_cpu did, for the console's first line: (devices, how they were chosen).
cpu_split = (0, 'one device')


def auto_cpu_devices(
    image_side: int | None, batch_sizes: tuple[int, ...], *, onednn: bool = False
) -> tuple[int, str]:
  """`parallelism.cpu_devices=0` (auto): (devices, why) for a process whose batches are
  `batch_sizes` (per process) and whose images are `image_side` pixels on a side (None: unknown).

  One device when the CPU backend may be oneDNN (`onednn`: cpu_backend auto or onednn, one
  process, oneDNN installed): its convolutions use every core from one device, and one device on
  oneDNN was the fastest setting at every input size measured (BENCHMARKS.md, "oneDNN
  convolutions"). Otherwise the largest of 8, 4, 2 that divides every batch, for inputs of at least
  AUTO_MIN_SIDE pixels; 2 from AUTO_LARGE_SIDE up; one device for smaller or unknown inputs.
  """
  if onednn:
    return 1, 'auto: oneDNN convolutions use every core from one device'
  if not image_side or image_side < AUTO_MIN_SIDE:
    side = f'{image_side}x{image_side}' if image_side else 'unknown-size'
    return 1, f'auto: {side} inputs run fastest on one device'
  for devices in (LARGE_SPLIT,) if image_side >= AUTO_LARGE_SIDE else (CPU_SPLIT, 4, 2):
    if all(size % devices == 0 for size in batch_sizes):
      return devices, f'auto: {image_side}x{image_side} inputs'
  return 1, 'auto: the batch does not divide over 2 devices'


def split_cpu(devices: int, how: str = 'parallelism.cpu_devices') -> None:
  """Makes each process's CPU backend `devices` devices (0 or 1: JAX's default, one). A launch that
  sets XLA_FLAGS=--xla_force_host_platform_device_count=N keeps its N: the environment of one launch
  (a test, a simulated multi-host job) is more specific than the config. Must run before JAX
  touches a device.

  Why: XLA's CPU backend runs one program's operations one after another, each spread over the
  cores; the batch split over several CPU devices runs as that many smaller programs side by side,
  which keeps the cores busier and the activations in cache, so a CIFAR-size step runs faster
  (BENCHMARKS.md, "CPU backend and device split by processor"). The results are those of one
  device (tests/test_parallel.py).
  GPUs and TPUs are untouched: JAX still picks them as the default backend.
  """
  global cpu_split
  if 'xla_force_host_platform_device_count' in os.environ.get('XLA_FLAGS', ''):
    cpu_split = (0, 'from XLA_FLAGS')
  else:
    if devices > 1:
      jax.config.update('jax_num_cpu_devices', devices)
    cpu_split = (max(devices, 1), how)


def make_mesh(devices=None) -> Mesh:
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


class DataParallel:
  """Places state and batches on the devices and compiles the steps, for one mode (MODES) and
  BatchNorm scope (BATCH_NORMS), as run.resolve checked them."""

  def __init__(self, mode: str = 'jit', batch_norm: str = 'global', mesh: Mesh | None = None):
    self.mode, self.batch_norm = mode, batch_norm
    self.mesh = make_mesh() if mesh is None else mesh
    self.replicated = NamedSharding(self.mesh, P())
    self.batch_sharded = NamedSharding(self.mesh, P(DATA_AXIS))
    self.local_devices = [
        d for d in self.mesh.devices.flat if d.process_index == jax.process_index()
    ]
    # pmap's inputs: a leading axis of one slice per local device.
    self.per_device = NamedSharding(
        Mesh(np.asarray(self.local_devices), ('devices',)), P('devices')
    )

  @property
  def bn_axis_name(self) -> str | None:
    """The model's BatchNorm axis: only a pmapped model must name it to share statistics."""
    return DATA_AXIS if self.mode == 'pmap' and self.batch_norm == 'global' else None

  # ------------------------------------------------------------------ state
  def to_devices(self, global_state):
    """From the global replicated form (as checkpoints hold it) to this mode's form."""
    if self.mode == 'jit':
      return global_state
    n = len(self.local_devices)
    copies = jax.tree.map(
        lambda x: np.broadcast_to(np.asarray(x.addressable_data(0)), (n, *x.shape)), global_state
    )
    return jax.device_put(copies, self.per_device)

  def to_global(self, state):
    """This mode's state in the global replicated form, for checkpoints and evaluation."""
    if self.mode == 'jit':
      return state
    # Each device's slice of a pmapped array is (1, ...): one copy of the state.
    one_copy = lambda x: np.asarray(x.addressable_data(0)).reshape(x.shape[1:])
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(self.replicated, one_copy(x)), state
    )

  # ------------------------------------------------------------------ batches
  def place_batch(self, local_batch: dict[str, np.ndarray]):
    """This process's batch -> a global array sharded on the batch axis (jit), or one slice per
    local device (pmap)."""
    if self.mode == 'jit':
      return self.place_global_batch(local_batch)
    n = len(self.local_devices)
    return jax.device_put(
        jax.tree.map(lambda x: x.reshape(n, -1, *x.shape[1:]), local_batch), self.per_device
    )

  def place_global_batch(self, local_batch: dict[str, np.ndarray]):
    """A batch for the steps that run on the global form (eval), whatever the mode. Arrays made on
    the devices (synthetic data) are global already: they stay there."""

    def place(x):
      if isinstance(x, jax.Array):
        return jax.device_put(x, self.batch_sharded)  # a no-op when the sharding is the same
      return jax.make_array_from_process_local_data(self.batch_sharded, x)

    return jax.tree.map(place, local_batch)

  def fetch(self, tree):
    """Device values -> host numpy (a pmapped result is the same on every device: take one)."""
    tree = jax.device_get(tree)
    return jax.tree.map(lambda x: x[0], tree) if self.mode == 'pmap' else tree

  # ------------------------------------------------------------------ steps
  def compile_train_step(self, step_fn):
    """`step_fn(state, batch, axis_name=...)` -> a compiled (state, batch) -> (state, metrics).

    The old state is donated: its buffers are reused for the new one.
    """
    if self.mode == 'pmap':
      return jax.pmap(
          functools.partial(step_fn, axis_name=DATA_AXIS),
          axis_name=DATA_AXIS,
          devices=self.local_devices if jax.process_count() == 1 else None,
          donate_argnums=0,
      )
    if self.batch_norm == 'per_device':
      # Each device normalises its own slice: a per-device program with explicit reductions.
      # check_vma=False: gradients stay per device until the step's own pmean (with it, JAX would
      # already sum the gradients of the replicated parameters, and the pmean would scale them).
      step_fn = jax.shard_map(
          functools.partial(step_fn, axis_name=DATA_AXIS),
          mesh=self.mesh,
          in_specs=(P(), P(DATA_AXIS)),
          out_specs=(P(), P()),
          check_vma=False,
      )
    return jax.jit(
        step_fn,
        in_shardings=(self.replicated, self.batch_sharded),
        out_shardings=(self.replicated, self.replicated),
        donate_argnums=0,
    )

  def compile_eval_step(self, step_fn, compiler_options: dict | None = None):
    """Eval runs on the global state in every mode (running averages are replicated).
    `compiler_options`: the train step's CPU backend (cpu_backend.options_for), None elsewhere."""
    return jax.jit(
        step_fn,
        in_shardings=(self.replicated, self.batch_sharded),
        out_shardings=self.replicated,
        compiler_options=compiler_options,
    )
