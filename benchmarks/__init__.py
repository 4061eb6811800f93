"""Performance measurements of the ResNet train step, input pipeline, loop, memory and sharding.

Each module is a CLI (`python -m benchmarks.<name> --help`) that prints one readable line per result
and, with --json, writes the same figures as JSON. `python -m benchmarks.run_all` runs the standard
set; BENCHMARKS.md holds the figures and the commands that produced them.
"""

from resnet_jax.common import host_memory

# Every benchmark's CPU steps run with the host memory setting the product's runs get (main.py),
# applied here, before any benchmark module starts JAX or PyTorch: both sides of a comparison.
host_memory.keep_freed_memory()
