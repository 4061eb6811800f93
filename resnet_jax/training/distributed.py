"""Multi-process start-up: one process per host (or per GPU under SLURM), JAX's multi-controller
runtime, one global mesh.

`initialize` must run before anything touches the devices. With explicit flags it joins the job they
describe; in 'auto' mode it lets JAX detect a cluster (Cloud TPU pods, SLURM, Open MPI, Kubernetes)
and otherwise runs as a single process.
"""

import jax
from absl import logging

from resnet_jax.common.errors import UserError


def initialize(
    mode: str = 'auto',
    *,
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    heartbeat_timeout_seconds: int = 100,
    initialization_timeout_seconds: int = 300,
) -> None:
  explicit = (coordinator_address, num_processes, process_id)
  if mode == 'off':
    if any(v is not None for v in explicit):
      raise UserError(
          '--distributed=off conflicts with --coordinator_address/--num_processes/--process_id; '
          'drop one or the other'
      )
    return
  if any(v is not None for v in explicit) and not all(v is not None for v in explicit):
    raise UserError(
        'give all of --coordinator_address, --num_processes and --process_id, or none of them '
        '(to let JAX detect the cluster)'
    )
  # CPU collectives between processes go through gloo (no effect on GPU/TPU, which have their own).
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  try:
    jax.distributed.initialize(
        coordinator_address,
        num_processes,
        process_id,
        initialization_timeout=initialization_timeout_seconds,
        heartbeat_timeout_seconds=heartbeat_timeout_seconds,
    )
  except ValueError as e:
    if coordinator_address is None and 'coordinator_address' in str(e):
      logging.info('No cluster detected: running as a single process.')
      return
    raise
  logging.info(
      'Joined a job of %d processes as process %d.', jax.process_count(), jax.process_index()
  )
