"""ImageNet-style evaluation preprocessing against torchvision's own transforms, image by image:
the 'center' protocol's view and the '10crop' protocol's ten views.

    .venv/bin/python -m benchmarks.preprocessing_parity [--torch_python /tmp/torchenv/bin/python]
        [--out benchmarks/preprocessing_parity.json]

Ours: `resnet_jax.data.pipeline.create_eval_iterator` (augment='inception_crop', image_size=224)
on an imagenet2012 split that serves the images' encoded bytes (through `tfds.testing.mock_data`).
Reference: torchvision's ImageNet evaluation, Compose([Resize(256), CenterCrop(224), ToTensor(),
Normalize(mean, std)]) on `PIL.Image.open(path).convert('RGB')`, run by a second interpreter that
has torch and torchvision (this project's environment has neither; theirs has no TensorFlow), which
returns its tensors in a temporary .npy file. The ten crops: ours are the eval iterator's uint8
views under `evaluation.protocol='10crop'` (resnet_jax/training/evaluation.py), theirs
Compose([Resize(256), TenCrop(224)]) on the same PIL image as uint8 arrays, compared crop by crop
in pixel units. The
images: scikit-learn's two sample photographs (640x427 JPEGs), a 300x427 portrait crop and a 130x97
crop (upscaled), both re-encoded by PIL. Differences are reported in 0..255 pixel units (and in
normalised units for the centre crop), as markdown tables on stdout and as JSON (--out).
"""

import argparse
import datetime
import importlib.resources
import io
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import PIL
from PIL import Image

SIZE = 224
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

# Run by --torch_python with argv [out.npy, out_ten_crops.npy, images...]: NHWC float32 to out.npy,
# uint8 [N, 10, 224, 224, 3] to out_ten_crops.npy, versions on stdout.
TORCHVISION_SIDE = """
import json, sys
import numpy as np, PIL, torch, torchvision
from PIL import Image
from torchvision import transforms
transform = transforms.Compose([
    transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
    transforms.Normalize(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))])
ten_crop = transforms.Compose([transforms.Resize(256), transforms.TenCrop(224)])
paths = sys.argv[3:]
images = [transform(Image.open(path).convert('RGB')) for path in paths]
np.save(sys.argv[1], torch.stack(images).permute(0, 2, 3, 1).numpy())
crops = [[np.asarray(c) for c in ten_crop(Image.open(path).convert('RGB'))] for path in paths]
np.save(sys.argv[2], np.asarray(crops, dtype=np.uint8))
print(json.dumps({'torch': torch.__version__, 'torchvision': torchvision.__version__,
                  'pillow': PIL.__version__}))
"""


def check_torch_python(torch_python: str) -> None:
  """Exits 2 with a one-line error unless `torch_python` imports torchvision."""
  try:
    result = subprocess.run(
        [torch_python, '-c', 'import torchvision'], capture_output=True, text=True, timeout=300
    )
  except OSError as e:
    sys.stderr.write(f'error: cannot run --torch_python {torch_python}: {e.strerror or e}\n')
    sys.exit(2)
  if result.returncode:
    last = (result.stderr.strip().splitlines() or ['no output'])[-1]
    sys.stderr.write(f'error: --torch_python {torch_python} cannot import torchvision ({last})\n')
    sys.exit(2)


def _encode(image: Image.Image) -> bytes:
  out = io.BytesIO()
  image.save(out, format='JPEG', quality=90)  # PIL's default 4:2:0 chroma subsampling
  return out.getvalue()


def sample_jpegs() -> dict[str, bytes]:
  folder = importlib.resources.files('sklearn.datasets') / 'images'
  jpegs = {f'{name}.jpg': (folder / f'{name}.jpg').read_bytes() for name in ('china', 'flower')}
  flower = Image.open(io.BytesIO(jpegs['flower.jpg'])).convert('RGB')
  jpegs['flower portrait crop'] = _encode(flower.crop((100, 0, 400, 427)))
  jpegs['flower small crop'] = _encode(flower.crop((200, 100, 330, 197)))
  return jpegs


def torchvision_images(
    torch_python: str, jpegs: dict[str, bytes]
) -> tuple[np.ndarray, np.ndarray, dict]:
  """torchvision's normalised [N, 224, 224, 3] and ten crops uint8 [N, 10, 224, 224, 3] (files'
  order), and its versions."""
  with tempfile.TemporaryDirectory() as folder:
    paths = []
    for index, data in enumerate(jpegs.values()):
      paths.append(os.path.join(folder, f'{index}.jpg'))
      with open(paths[-1], 'wb') as f:
        f.write(data)
    out = os.path.join(folder, 'out.npy')
    out_ten_crops = os.path.join(folder, 'out_ten_crops.npy')
    result = subprocess.run(
        [torch_python, '-c', TORCHVISION_SIDE, out, out_ten_crops, *paths],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if result.returncode:
      sys.stderr.write(result.stderr)
      sys.exit(f'error: the torchvision side failed (exit {result.returncode})')
    versions = json.loads(result.stdout.strip().splitlines()[-1])
    return np.load(out), np.load(out_ten_crops), versions


def our_images(jpegs: dict[str, bytes], protocol: str = 'center') -> np.ndarray:
  """The eval iterator's normalised [N, 224, 224, 3] ('center') or uint8 [N, 10, 224, 224, 3]
  ('10crop') on an imagenet2012 split of these bytes."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  from resnet_jax.config import resolve  # pylint: disable=import-outside-toplevel
  from resnet_jax.config import fields  # pylint: disable=import-outside-toplevel
  from resnet_jax.data import pipeline as input_pipeline  # pylint: disable=import-outside-toplevel

  def as_dataset(self, *args, **kwargs):  # replaces the builder's reader
    del self, args, kwargs
    return tf.data.Dataset.from_tensor_slices(
        {'image': list(jpegs.values()), 'label': np.arange(len(jpegs), dtype=np.int64)}
    )

  config = fields.base_config('resnet50')
  config.dataset.update(
      name='imagenet2012', eval_split='validation', augment='inception_crop', image_size=SIZE
  )
  config.dataset.cache = False
  config.evaluation.protocol = protocol
  with tfds.testing.mock_data(as_dataset_fn=as_dataset):
    run = resolve.resolve(config, device_count=1, process_count=1, training=False)
    (batch,) = list(
        input_pipeline.create_eval_iterator(
            run.data, local_batch_size=len(jpegs), eval_spec=run.evaluation
        )
    )
  assert batch['mask'].all() and batch['label'].tolist() == list(range(len(jpegs)))
  return batch['image'] if protocol == 'center' else batch['views']['crops']


def compare(name: str, data: bytes, ours: np.ndarray, theirs: np.ndarray) -> dict:
  normalised = np.abs(ours.astype(np.float64) - theirs.astype(np.float64))
  pixels = normalised * np.array(STD) * 255.0
  w, h = Image.open(io.BytesIO(data)).size
  return {
      'image': name,
      'size': f'{w}x{h}',
      'shape': list(ours.shape),
      'max_abs_pixels': float(pixels.max()),
      'mean_abs_pixels': float(pixels.mean()),
      'max_abs_normalised': float(normalised.max()),
      'mean_abs_normalised': float(normalised.mean()),
      'fraction_off_by_1': float((pixels > 0.5).mean()),
  }


def compare_ten_crops(name: str, data: bytes, ours: np.ndarray, theirs: np.ndarray) -> dict:
  """Ours and torchvision's ten uint8 crops of one image, in pixel units."""
  diff = np.abs(ours.astype(np.int64) - theirs.astype(np.int64))
  w, h = Image.open(io.BytesIO(data)).size
  return {
      'image': name,
      'size': f'{w}x{h}',
      'shape': list(ours.shape),
      'max_abs_pixels': int(diff.max()),
      'mean_abs_pixels': float(diff.mean()),
      'fraction_off_by_1': float((diff == 1).mean()),
      'fraction_equal': float((diff == 0).mean()),
      'worst_crop': int(diff.reshape(10, -1).mean(axis=1).argmax()),
  }


def ten_crop_markdown(rows: list[dict]) -> str:
  lines = [
      (
          '| image | size (w x h) | max abs (0..255) | mean abs (0..255) | values equal | values'
          ' off by 1 |'
      ),
      '|---|---|---|---|---|---|',
  ]
  for r in rows:
    lines.append(
        f"| {r['image']} | {r['size']} | {r['max_abs_pixels']} | {r['mean_abs_pixels']:.4f} |"
        f" {100 * r['fraction_equal']:.2f}% | {100 * r['fraction_off_by_1']:.2f}% |"
    )
  return '\n'.join(lines)


def markdown(rows: list[dict]) -> str:
  lines = [
      (
          '| image | size (w x h) | max abs (0..255) | mean abs (0..255) | max abs (normalised) '
          '| mean abs (normalised) | values off by 1 |'
      ),
      '|---|---|---|---|---|---|---|',
  ]
  for r in rows:
    lines.append(
        f"| {r['image']} | {r['size']} | {r['max_abs_pixels']:.3f} | "
        f"{r['mean_abs_pixels']:.4f} | {r['max_abs_normalised']:.4f} | "
        f"{r['mean_abs_normalised']:.5f} | {100 * r['fraction_off_by_1']:.2f}% |"
    )
  return '\n'.join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
  parser.add_argument(
      '--torch_python',
      default='/tmp/torchenv/bin/python',
      help='an interpreter with torch and torchvision',
  )
  parser.add_argument('--out', default='benchmarks/preprocessing_parity.json')
  args = parser.parse_args()
  check_torch_python(args.torch_python)

  jpegs = sample_jpegs()
  theirs, theirs_ten, versions = torchvision_images(args.torch_python, jpegs)
  ours = our_images(jpegs)
  assert ours.shape == theirs.shape == (len(jpegs), SIZE, SIZE, 3), (ours.shape, theirs.shape)
  rows = [compare(name, data, o, t) for (name, data), o, t in zip(jpegs.items(), ours, theirs)]
  ours_ten = our_images(jpegs, protocol='10crop')
  assert ours_ten.shape == theirs_ten.shape == (len(jpegs), 10, SIZE, SIZE, 3), (
      ours_ten.shape,
      theirs_ten.shape,
  )
  ten_crop_rows = [
      compare_ten_crops(name, data, o, t)
      for (name, data), o, t in zip(jpegs.items(), ours_ten, theirs_ten)
  ]

  import tensorflow as tf  # pylint: disable=import-outside-toplevel

  result = {
      'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      'command': ' '.join(
          [os.path.relpath(sys.executable), '-m', 'benchmarks.preprocessing_parity', *sys.argv[1:]]
      ),
      'ours': {'tensorflow': tf.__version__, 'pillow': PIL.__version__},
      'torchvision_side': versions,
      'rows': rows,
      'ten_crop_rows': ten_crop_rows,
  }
  print(markdown(rows), flush=True)
  print('\nResize(256) + TenCrop(224), the ten crops of each image:', flush=True)
  print(ten_crop_markdown(ten_crop_rows), flush=True)
  with open(args.out, 'w') as f:
    f.write(json.dumps(result, indent=1) + '\n')


if __name__ == '__main__':
  main()
