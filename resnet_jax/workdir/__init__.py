"""A run's workdir, its record: the lock (lock.py), checkpoints (checkpoints.py), metrics and
TensorBoard (metrics.py), config.json and history.jsonl (record.py)."""
