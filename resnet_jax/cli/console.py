"""What a training run shows a person on the console (process 0 only).

A short line per log step (step/total, train loss and top-1 accuracy, lr, images/s of training
alone, time left), a line per evaluation, and on a terminal an in-place progress bar between them
(tqdm; plain lines when the output is a file or a CI log). The run ends with a summary table. Every
other scalar (gradient norms, residual ratios, ...) goes to metrics.jsonl and TensorBoard only.
"""

import sys
import time

import jax
import tqdm

from resnet_jax.workdir import checkpoints as checkpointing, metrics as metric_logging

_STARTED = time.perf_counter()  # main() imports the trainer, and with it this, as it starts


def _duration(seconds: float) -> str:
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  return f'{hours}h{rest // 60:02d}m' if hours else f'{rest // 60}m{rest % 60:02d}s'


def _percent(fraction: float) -> str:
  return f'{100 * fraction:.2f}%'


def _accuracy(k: int, error: float) -> str:
  return f'top-{k} {_percent(1 - error)} (error {_percent(error)})'


def _protocol(metrics: dict) -> str:
  """The evaluation protocol and its views per image: `center`, `10crop, 10 views`."""
  protocol = metrics.get('eval_protocol', 'center')  # rows written before protocols: center
  views = int(metrics.get('eval_views', 1))
  return protocol if views == 1 else f'{protocol}, {views} views'


class Throughput:
  """Images per second of training alone: counted from the end of the invocation's first step (so
  compilation is left out), with evaluation time taken out."""

  def __init__(self, batch_size: int):
    self.batch_size = batch_size
    self.first_step = self.window_step = None
    self.first_time = self.window_time = 0.0

  def start(self, step: int) -> None:
    """`step` has just finished (the caller waited for it): timing starts here."""
    self.first_step = self.window_step = step
    self.first_time = self.window_time = time.perf_counter()

  def exclude(self, seconds: float) -> None:
    """Time spent on something else (an evaluation) since the last window."""
    self.first_time += seconds
    self.window_time += seconds

  def window(self, step: int) -> float | None:
    """Images/s since the last call (None before any step was timed)."""
    if self.window_step is None:
      return None
    now, steps = time.perf_counter(), step - self.window_step
    rate = steps * self.batch_size / (now - self.window_time) if steps > 0 else None
    self.window_step, self.window_time = step, now
    return rate

  def mean(self, step: int) -> float | None:
    if self.first_step is None or step <= self.first_step:
      return None
    return (step - self.first_step) * self.batch_size / (time.perf_counter() - self.first_time)

  def seconds_left(self, step: int, num_steps: int) -> float | None:
    rate = self.mean(step)
    return None if rate is None else (num_steps - step) * self.batch_size / rate


class Console:
  """The console of one training run; silent on processes other than 0."""

  def __init__(self, *, num_steps: int, start_step: int):
    self.enabled = jax.process_index() == 0
    self.num_steps = num_steps
    self._bar = None
    if self.enabled and sys.stderr.isatty() and start_step < num_steps:
      self._bar = tqdm.tqdm(
          total=num_steps, initial=start_step, leave=False, dynamic_ncols=True, unit='step'
      )

  def print(self, text: str) -> None:
    if not self.enabled:
      return
    if self._bar is not None:
      self._bar.write(text, file=sys.stdout)
    else:
      print(text, flush=True)

  def advance(self) -> None:
    if self._bar is not None:
      self._bar.update()

  def train_line(
      self, step: int, scalars: dict, learning_rate: float, throughput: Throughput
  ) -> None:
    """`scalars`: the means over the steps since the last line; `learning_rate`: this step's."""
    width = len(str(self.num_steps))
    parts = [
        f'step {step:>{width}}/{self.num_steps}',
        f'loss {scalars["train_loss"]:.4f}',
        f'acc {_percent(1 - scalars["train_error"])}',
        f'lr {learning_rate:.4g}',
    ]
    if scalars.get('images_per_second'):
      parts.append(f'{scalars["images_per_second"]:,.0f} img/s')
    left = throughput.seconds_left(step, self.num_steps)
    if left is not None:
      parts.append(f'ETA {_duration(left)}')
    self.print('  '.join(parts))

  def eval_line(self, step: int, metrics: dict) -> None:
    self.print(
        f'eval at step {step} ({_protocol(metrics)}): {_accuracy(1, metrics["eval_top1_error"])},'
        f' top-5 {_percent(1 - metrics["eval_top5_error"])}, loss {metrics["eval_loss"]:.4f} on'
        f' {metrics["eval_examples"]:,.0f} images'
    )

  def summary(self, workdir, *, step: int, images_per_second: float | None, plot) -> None:
    """The end-of-run table: the final and best evaluations of the whole run (every invocation,
    from metrics.jsonl), time, throughput, and where everything is."""
    if not self.enabled:
      return
    evals = [r for r in metric_logging.read_metrics(workdir) if 'eval_top1_error' in r]
    rows = []
    if evals:
      best = min(evals, key=checkpointing.best_rank)
      for name, row in (('final', evals[-1]), ('best', best)):
        rows.append((
            f'{name} eval (step {row["step"]}, {_protocol(row)})',
            f'{_accuracy(1, row["eval_top1_error"])}, {_accuracy(5, row["eval_top5_error"])}',
        ))
    rows += [
        ('steps', f'{step}/{self.num_steps}'),
        ('wall time', _duration(time.perf_counter() - _STARTED) + ' (this invocation)'),
    ]
    if images_per_second:
      rows.append(('training speed', f'{images_per_second:,.0f} images/s (mean, no compilation)'))
    rows += [
        ('checkpoints', f'{workdir}/checkpoints (latest, and best by eval top-1)'),
        ('metrics', f'{workdir}/metrics.jsonl'),
        ('TensorBoard', f'tensorboard --logdir {workdir}'),
    ]
    if plot:
      rows.append(('curves', str(plot)))
    width = max(len(name) for name, _ in rows)
    self.print('\n'.join(['', *(f'{name:<{width}}  {value}' for name, value in rows)]))

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
      self._bar = None
