"""Using a trained model: one-file bundles, k-best paths with back-off, and the ``dhnn`` command.

- ``bundle``: export a run's checkpoint with its taxonomy and preprocessing into one safe file,
  and load it back without params.yaml (``python -m dhnn.serving.bundle``).
- ``prefixes``: the k best paths of any model kind and the probability of each prefix of a path.
- ``backoff``: back-off to the deepest confident prefix, and the risk-coverage tables the report plots.
- ``images``: image files read and prepared as the model's training images were.
- ``cli``: ``dhnn predict --model BUNDLE [--k 3] [--backoff TAU] [--json] IMAGE_OR_FOLDER...``.
"""
