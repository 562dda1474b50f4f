"""Feature extractors for sample-quality metrics.

- ``pixels``: the data themselves, flattened (toy data, where distances in data space mean
  something);
- ``data_classifier``: the penultimate layer of a small CNN trained on the data set's own
  labels, for data sets where Inception-v3 means nothing (the 8x8 digits). Numbers computed
  with it are **not comparable with published FIDs**, and only with numbers computed with
  the same trained weights (its identity records their checksum).
"""

from sdeplug import hookimpl
from sdeplug_features.classifier import DataClassifierFeatures
from sdeplug_features.pixels import PixelFeatures

__all__ = ["DataClassifierFeatures", "PixelFeatures"]


@hookimpl
def register_feature_extractors(register):
    register(PixelFeatures)
    register(DataClassifierFeatures)
