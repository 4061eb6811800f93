"""Training: the step (step.py), the loop (loop.py), the optimizer (optim.py), data parallelism over
a device mesh (parallel.py, distributed.py), the CPU backend chosen by measurement (cpu_backend.py),
the evaluation protocols' programs (evaluation.py) and stopping on a signal (preemption.py)."""
