"""benchmarks/tfds_mock.py: TFDS's mock data without hiding other threads' files.

With `tfds.testing.mock_data` alone, a thread polling a real directory while another built
datasets saw it missing 12% of the time, and two threads building at once failed ("`splits` is
empty"); CI once lost a checkpoint save to the first.
"""

import threading

import tensorflow_datasets as tfds

from benchmarks import tfds_mock


def test_building_datasets_hides_no_real_path_from_another_thread_and_builds_take_turns(tmp_path):
  stop, seen = threading.Event(), []

  def poll():
    while not stop.is_set():
      seen.append(tmp_path.exists())

  def build(builder, times, failures):
    try:
      for _ in range(times):
        builder.as_dataset(split='train')
    except Exception as e:  # pylint: disable=broad-except
      failures.append(e)

  failures = []
  with tfds_mock.mock_data(num_examples=3):
    builder = tfds.builder('cifar10')
    poller = threading.Thread(target=poll)
    other_builder = threading.Thread(target=build, args=(builder, 10, failures))
    poller.start()
    other_builder.start()
    build(builder, 10, failures)
    other_builder.join()
    stop.set()
    poller.join()
    examples = list(builder.as_dataset(split='train'))
  assert not failures
  assert len(seen) > 1000 and all(seen)
  assert len(examples) == 3 and examples[0]['image'].shape == (32, 32, 3)
