"""Input: the pipeline (pipeline.py) over a TFDS dataset (tfds_source.py) or made-up images
(synthetic_source.py); the project's own TFDS datasets (datasets/)."""
