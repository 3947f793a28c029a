"""The study's networks by name: the pretrained net and its finetuned variants.

Every experiment that needs features (detection, classification, the
analyses, the study) names a net, and `resolve` returns where its params are,
training them first when they do not exist yet:

  pretrained  `config.nets.pretrained`: an imported CaffeNet
              (`python -m cnnjax.tools.import_caffe`) or a pretraining
              workdir; with `config.nets.pretrain` set (the demo), that
              pretraining runs first (or resumes, or is found finished).
  ft, fcft,   finetuning runs of `config.nets.finetune[<name>]` in
  fiftyfifty  `<workdir>/nets/<name>` (trained once, reused by every rerun).

The network's input geometry (warp size and context) and mean image travel
with it, so features are always extracted the way the net was trained.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Optional

import ml_collections
import numpy as np

from cnnjax import checkpoints
from cnnjax.data import preprocess

NET_NAMES = ('pretrained', 'ft', 'fcft', 'fiftyfifty')

PREPARE_WEIGHTS = """\
No pretrained CaffeNet at {where}. Either import the released weights:
  wget http://dl.caffe.berkeleyvision.org/bvlc_reference_caffenet.caffemodel
  wget https://github.com/BVLC/caffe/raw/master/python/caffe/imagenet/ilsvrc_2012_mean.npy
  python -m cnnjax.tools.import_caffe \\
      --caffemodel bvlc_reference_caffenet.caffemodel \\
      --mean ilsvrc_2012_mean.npy --out ~/weights/caffenet
and pass nets.pretrained=~/weights/caffenet (and nets.mean_path=
~/weights/caffenet/mean.npy), or pretrain one yourself:
  python -m cnnjax.main --config configs/imagenet_caffenet.py \\
      --workdir ~/runs/imagenet_caffenet
and pass nets.pretrained=~/runs/imagenet_caffenet."""


@dataclasses.dataclass(frozen=True, eq=False)
class Net:
  """A resolved network: its checkpoint and how to feed it.

  Attributes:
    name: one of NET_NAMES.
    checkpoint: a checkpoint directory for `checkpoints.load_params`.
    step: the checkpoint step (None = latest).
    model_kwargs: CaffeNet arguments (num_classes, width) read off the params.
    input_size: the warp size (227 at full scale).
    context: warp context pixels (16 at 227, scaled with the input size).
    mean: float32 [S, S, 3] BGR mean image, or None for the per-channel means.
  """
  name: str
  checkpoint: str
  step: Optional[int]
  model_kwargs: dict
  input_size: int
  context: int
  mean: Optional[np.ndarray]

  def params(self) -> Any:
    return checkpoints.load_params(self.checkpoint, self.step)


def nets_config(*, pretrained: str = '', pretrain=None, finetune=None,
                input_size: int = 227, mean_path: str = '',
                pretrained_step: Optional[int] = None
                ) -> ml_collections.ConfigDict:
  """The `config.nets` block (see the module docstring)."""
  config = ml_collections.ConfigDict()
  config.pretrained = pretrained
  config.pretrained_step = pretrained_step if pretrained_step is not None else -1
  config.pretrain = pretrain
  config.finetune = finetune or {}
  config.input_size = input_size
  config.mean_path = mean_path
  return config


def model_kwargs_of(params: Any) -> dict:
  """CaffeNet(num_classes, width) that fits `params` (read off the shapes)."""
  conv1 = params['conv1']['kernel'].shape[-1]
  return {'num_classes': int(params['fc8']['kernel'].shape[-1]),
          'width': conv1 / 96}


def _context(input_size: int) -> int:
  """R-CNN's 16 px of context at 227, scaled for smaller demo inputs."""
  return int(round(16 * input_size / 227))


def check_pretrained(config: ml_collections.ConfigDict) -> None:
  """Fails at once, with the steps to get weights, if none can be had."""
  nets = config.nets
  if nets.get('pretrain'):
    return  # trained on demand
  if not nets.pretrained or checkpoints.latest_step(
      os.path.expanduser(nets.pretrained)) is None:
    raise FileNotFoundError(PREPARE_WEIGHTS.format(
        where=nets.pretrained or 'nets.pretrained (unset)'))


def resolve(config: ml_collections.ConfigDict, name: str,
            workdir: str) -> Net:
  """The net `name`, trained first if it does not exist yet."""
  from cnnjax import train  # pylint: disable=g-import-not-at-top
  nets = config.nets
  if name not in NET_NAMES:
    raise ValueError(f'unknown net {name!r}; valid: {", ".join(NET_NAMES)}')
  if name == 'pretrained':
    check_pretrained(config)
    checkpoint = os.path.expanduser(nets.pretrained)
    if nets.get('pretrain'):
      train.run(nets.pretrain, checkpoint)
    step = None if nets.pretrained_step < 0 else nets.pretrained_step
  else:
    if name not in nets.finetune:
      raise ValueError(f'net {name!r} has no finetuning config in '
                       f'config.nets.finetune (have {sorted(nets.finetune)})')
    checkpoint = os.path.join(workdir, 'nets', name)
    finetune = ml_collections.ConfigDict(nets.finetune[name].to_dict())
    # Share the experiment's selective-search cache instead of redoing it.
    finetune.input.proposals_dir = (finetune.input.proposals_dir or
                                    os.path.join(workdir, 'proposals'))
    train.run(finetune, checkpoint)
    step = None
  shapes = checkpoints.load_params(checkpoint, step)
  mean = (preprocess.mean_image(os.path.expanduser(nets.mean_path))
          if nets.mean_path else None)
  return Net(name=name, checkpoint=checkpoint, step=step,
             model_kwargs=model_kwargs_of(shapes),
             input_size=nets.input_size, context=_context(nets.input_size),
             mean=mean)

