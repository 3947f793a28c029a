"""The network: CaffeNet and its weight import."""

from cnnjax.models.caffenet import BLOBS, STUDY_LAYERS, CaffeNet, init_params

__all__ = ['BLOBS', 'STUDY_LAYERS', 'CaffeNet', 'init_params']
