"""The device mesh and the compiled train/eval steps over it.

jit (default): one program over global arrays; the batch is split along the mesh's 'data' axis and
everything else is replicated, so XLA computes BatchNorm statistics and gradient means over the whole
global batch and inserts the all-reduces itself (the pjit path; the same code runs on one CPU or a pod).
"""

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from resnet_jax.errors import UserError

DATA_AXIS = 'data'


class BatchSizeError(UserError):
  pass


def make_mesh() -> Mesh:
  return jax.make_mesh((jax.device_count(),), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(batch_size: int, what: str) -> int:
  """The per-process batch size; a batch must split evenly over devices and processes."""
  devices, processes = jax.device_count(), jax.process_count()
  if batch_size <= 0 or batch_size % devices:
    raise BatchSizeError(
        f'{what}={batch_size} does not divide over the {devices} devices; '
        f'use a multiple of {devices}, e.g. --config.{what}={max(devices, batch_size // devices * devices)}')
  return batch_size // processes


def jit_train_step(step_fn, mesh: Mesh):
  """Donates the old state: its buffers are reused for the new one."""
  return jax.jit(step_fn, in_shardings=(replicated(mesh), batch_sharded(mesh)),
                 out_shardings=(replicated(mesh), replicated(mesh)), donate_argnums=0)


def jit_eval_step(step_fn, mesh: Mesh):
  return jax.jit(step_fn, in_shardings=(replicated(mesh), batch_sharded(mesh)),
                 out_shardings=replicated(mesh))


def jit_init(init_fn, mesh: Mesh):
  return jax.jit(init_fn, out_shardings=replicated(mesh))


def abstract_like(tree, sharding):
  """ShapeDtypeStructs carrying `sharding`: the target orbax restores into."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)

