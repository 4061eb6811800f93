"""What every layer shares: the user's errors (errors.py), the libraries' logs kept quiet
(library_noise.py), JSON lines that survive a torn write (jsonl.py),
glibc's malloc set to keep the memory a CPU step frees (host_memory.py)."""
