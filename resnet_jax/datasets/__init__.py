"""Project TFDS datasets. Importing this package registers them with `tfds.builder`.

* `sklearn_digits`: scikit-learn's bundled 8x8 digits, prepared offline.
"""

try:  # tfds' DatasetBuilder.download_and_prepare imports `importlib_resources`, which
  import importlib_resources  # noqa: F401  tfds does not declare as a dependency.
except ImportError:  # The stdlib module provides what tfds uses from it (Python >= 3.11).
  import importlib.resources as _resources
  import importlib.resources.abc  # noqa: F401  (tfds reads importlib_resources.abc.Traversable)
  import sys as _sys

  _sys.modules['importlib_resources'] = _resources

from resnet_jax.datasets import sklearn_digits  # noqa: E402,F401  (registers `sklearn_digits`)
from resnet_jax.datasets.sklearn_digits import SklearnDigits  # noqa: E402,F401
