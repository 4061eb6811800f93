"""`--mode=predict`: image files classified by a trained run as its evaluation would."""

import json
import struct
import zlib

import jax
import numpy as np
import pytest
from PIL import Image

from resnet_jax.config import resolve  # pylint: disable=import-outside-toplevel

from resnet_jax.data import pipeline as input_pipeline
from resnet_jax.cli import predict
from resnet_jax.workdir import record as run_record
from resnet_jax.data.datasets import sklearn_digits
from resnet_jax.data.datasets.prepare import get_dataset_builder
from tests.cli import check, restored_state, run_main

NUM_IMAGES = 8
pytestmark = pytest.mark.slow  # one short training run through the CLI


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """A resnet8 trained briefly on the offline digits through the real CLI: (workdir, data_dir)."""
  root = tmp_path_factory.mktemp('predict')
  workdir, data_dir = root / 'run', root / 'tfds'
  check(
      run_main(
          '--config=configs/digits.py:resnet8',
          f'--workdir={workdir}',
          f'--config.dataset.data_dir={data_dir}',
          '--config.train.num_steps=40',
          '--config.train.eval_every_steps=40',
          '--config.train.checkpoint_every_steps=40',
          '--config.schedule.boundaries=(30,35)',
          devices=1,
          timeout=300,
      )
  )
  return workdir, data_dir


@pytest.fixture(scope='module')
def test_images(trained, tmp_path_factory):
  """The first digits of the eval split (scikit-learn's, scaled to 0..255), in the order the eval
  pipeline reads them, as 8x8 grey PNG files: (paths, labels)."""
  config = run_record.config_from_record(json.loads((trained[0] / 'config.json').read_text()))
  builder = get_dataset_builder(
      resolve.resolve(config, device_count=1, process_count=1, training=False).data
  )
  split = builder.as_dataset(split='test', shuffle_files=False).take(NUM_IMAGES)
  sklearn_images, _ = sklearn_digits._load_digits()  # pylint: disable=protected-access
  folder = tmp_path_factory.mktemp('images')
  paths, labels = [], []
  for i, example in enumerate(split.as_numpy_iterator()):
    image = example['image'][:, :, 0]
    assert (sklearn_images[:, :, :, 0] == image).all(axis=(1, 2)).any()
    paths.append(folder / f'digit{i}.png')
    Image.fromarray(image).save(paths[-1])
    labels.append(example['label'])
  return paths, np.array(labels)


def eval_probabilities(workdir) -> np.ndarray:
  """The trained net's outputs on the first eval-split images, through the eval pipeline."""
  config = run_record.config_from_record(json.loads((workdir / 'config.json').read_text()))
  data = resolve.resolve(config, device_count=1, process_count=1, training=False).data
  batch = next(input_pipeline.create_eval_iterator(data, local_batch_size=NUM_IMAGES))
  state = restored_state(workdir, 40)
  model = resolve.check(config).model.build(10)
  variables = {'params': state['params'], 'batch_stats': state['batch_stats']}
  return np.asarray(jax.nn.softmax(model.apply(variables, batch['image'], train=False)))


def test_json_predictions_match_the_eval_pipeline_and_a_bad_file_is_one_line(
    trained, test_images, tmp_path
):
  workdir, _ = trained
  paths, labels = test_images
  (tmp_path / 'notes.png').write_text('not an image')
  files = [*map(str, paths[:3]), str(tmp_path / 'notes.png'), *map(str, paths[3:])]
  result = run_main('--mode=predict', f'--workdir={workdir}', '--json', '--images', *files)
  assert result.returncode == 2, result.stderr[-2000:]
  errors = [line for line in result.stderr.splitlines() if line.startswith('error:')]
  assert len(errors) == 1 and 'notes.png is not an image' in errors[0], errors
  records = [json.loads(line) for line in result.stdout.splitlines()]
  assert [r['image'] for r in records] == list(map(str, paths))
  expected = eval_probabilities(workdir)
  for record, probabilities in zip(records, expected):
    assert record['step'] == 40 and len(record['top5']) == 5
    assert [c['label'] for c in record['top5']] == list(np.argsort(-probabilities)[:5])
    np.testing.assert_allclose(
        [c['probability'] for c in record['top5']], np.sort(probabilities)[::-1][:5], atol=1e-5
    )
  predicted = np.array([r['top5'][0]['label'] for r in records])
  assert np.mean(predicted == labels) >= 0.75, (predicted, labels)


def test_text_output_names_the_classes(trained, test_images, capsys):
  paths, labels = test_images
  assert predict.predict_files(trained[0], paths[:2], step=40) == 0
  lines = capsys.readouterr().out.splitlines()
  assert len(lines) == 2 and lines[0].startswith(f'{paths[0]}: ')
  assert len(lines[0].split(': ', 1)[1].split(', ')) == 5  # e.g. '3 97.1%, 8 1.2%, ...'


def test_a_workdir_that_cannot_serve_is_one_line_and_creates_nothing(trained, tmp_path, capsys):
  image = str(tmp_path / 'x.png')
  missing = tmp_path / 'missing'
  assert predict.predict_files(missing, [image]) == 2
  untrained = tmp_path / 'untrained'
  untrained.mkdir()
  (untrained / 'config.json').write_text((trained[0] / 'config.json').read_text())
  assert predict.predict_files(untrained, [image]) == 2
  assert predict.predict_files(trained[0], [image], step=7) == 2
  errors = capsys.readouterr().err.splitlines()
  assert len(errors) == 3 and all(e.startswith('error: ') for e in errors), errors
  assert "is not a run's workdir" in errors[0] and "is not a run's workdir" in errors[1]
  assert 'has no checkpoint 7: give latest, best, or one of the steps 40' in errors[2]
  assert not missing.exists() and [p.name for p in untrained.iterdir()] == ['config.json']


def _huge_png(path, width=20000, height=20000):
  """A PNG whose header says width x height (its pixel data is one pixel's: never decoded)."""
  Image.new('L', (1, 1)).save(path)
  data = bytearray(path.read_bytes())
  data[16:24] = struct.pack('>II', width, height)  # IHDR's width and height
  data[29:33] = struct.pack('>I', zlib.crc32(bytes(data[12:29])))
  path.write_bytes(bytes(data))


def test_an_image_of_too_many_pixels_is_refused_before_decoding(trained, test_images, capsys):
  paths, _ = test_images
  huge = paths[0].parent / 'huge.png'
  _huge_png(huge)
  assert predict.predict_files(trained[0], [huge, paths[0]]) == 2
  out, err = capsys.readouterr()
  assert err.splitlines() == [
      f"error: {huge} is 20000x20000 pixels, more than the 89,478,485 that predict decodes (PIL's"
      ' limit against decompression bombs); resize it first (evaluation resizes it anyway)'
  ]
  assert out.startswith(f'{paths[0]}: ')  # the other image is still classified
