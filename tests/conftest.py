"""Every test sees 8 simulated CPU devices, as a small TPU slice would give, so sharding is exercised."""

import os

os.environ['XLA_FLAGS'] = ' '.join(
    f for f in (os.environ.get('XLA_FLAGS', ''), '--xla_force_host_platform_device_count=8') if f)
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')


def pytest_configure(config):
  config.addinivalue_line('markers', 'slow: an end-to-end run through the CLI (few; they run in CI too)')
