"""Performance measurements of the ResNet train step, input pipeline, loop, memory and sharding.

Each module is a CLI (`python -m benchmarks.<name> --help`) that prints one readable line per result
and, with --json, writes the same figures as JSON. `python -m benchmarks.run_all` runs the standard
set; BENCHMARKS.md holds the figures and the commands that produced them.
"""
