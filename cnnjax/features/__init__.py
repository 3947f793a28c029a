"""Feature extraction from CaffeNet layers and the on-disk feature store."""

from cnnjax.features.extract import extract_features
from cnnjax.features.extract import gt_boxes
from cnnjax.features.extract import proposal_boxes
from cnnjax.features.extract import whole_images
from cnnjax.features.store import FeatureStore
from cnnjax.features.store import FeatureStoreWriter

__all__ = ['FeatureStore', 'FeatureStoreWriter', 'extract_features',
           'gt_boxes', 'proposal_boxes', 'whole_images']
