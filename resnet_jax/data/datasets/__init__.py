"""Project TFDS datasets. Importing this package registers them with `tfds.builder`.

* `sklearn_digits`: scikit-learn's bundled 8x8 digits, prepared offline.
"""

from resnet_jax.data.datasets import sklearn_digits  # noqa: F401  (registers `sklearn_digits`)
