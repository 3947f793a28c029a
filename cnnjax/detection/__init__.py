"""R-CNN detection: SVM training with hard-negative mining, NMS, evaluation."""

from cnnjax.detection.nms import batched_nms
from cnnjax.detection.nms import nms

__all__ = ['batched_nms', 'nms']
