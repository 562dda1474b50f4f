"""Feature extractors for sample-quality metrics.

- ``inception``: FID's Inception-v3 pool features (2048), the network written here, its
  weights from pytorch-fid's file that the user names (never downloaded); the only
  features whose FIDs compare with published ones;
- ``pixels``: the data themselves, flattened (toy data, where distances in data space mean
  something);
- ``data_classifier``: the penultimate layer of a small CNN trained on the data set's own
  labels, for data sets where Inception-v3 means nothing (the 8x8 digits). Numbers computed
  with it are **not comparable with published FIDs**, and only with numbers computed with
  the same trained weights (its identity records their checksum).
"""

from sdeplug import hookimpl
from sdeplug_features.classifier import DataClassifierFeatures
from sdeplug_features.inception import InceptionFeatures
from sdeplug_features.pixels import PixelFeatures

__all__ = ["DataClassifierFeatures", "InceptionFeatures", "PixelFeatures"]


@hookimpl
def register_feature_extractors(register):
    register(PixelFeatures)
    register(DataClassifierFeatures)
    register(InceptionFeatures)
