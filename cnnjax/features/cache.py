"""The workdir's feature stores, one per (net, split, example kind), shared.

Detection, classification, the analyses and the study all ask for features
here, so an experiment reuses what another already extracted:

  <workdir>/features/<net>[@<step>]/<split>_<kind>/   (a FeatureStore)

kinds: 'whole' (PASCAL-CLS: each image warped as one box), 'gt' (every GT
box, difficult included), 'proposals' (GT boxes then proposals, R-CNN).
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

import jax
import numpy as np

from cnnjax import nets as nets_lib
from cnnjax.data.voc import VocImage
from cnnjax.features import extract
from cnnjax.features import store as store_lib

KINDS = ('whole', 'gt', 'proposals')


def store_dir(workdir: str, net: nets_lib.Net, split: str, kind: str) -> str:
  tag = net.name if net.step is None else f'{net.name}@{net.step}'
  return os.path.join(workdir, 'features', tag, f'{split}_{kind}')


def features(net: nets_lib.Net, images: Sequence[VocImage], split: str,
             kind: str, layers: Sequence[str], workdir: str, *,
             batch_size: int, encoding='float32',
             proposals: Optional[Sequence[np.ndarray]] = None
             ) -> store_lib.FeatureStore:
  """The store of `kind` examples of `split` under `net` (extracted once).

  Raises:
    ValueError: an unknown kind, proposals missing for kind 'proposals', or
      a cached store lacking one of `layers` or extracted from other params
      (the net was retrained or replaced; delete it to re-extract).
  """
  if kind not in KINDS:
    raise ValueError(f'unknown example kind {kind!r}; valid: {", ".join(KINDS)}')
  out_dir = store_dir(workdir, net, split, kind)
  try:
    found = store_lib.FeatureStore.open(out_dir)
  except FileNotFoundError:
    found = None
  if found is not None:
    missing = set(layers) - set(found.layer_names)
    if missing:
      raise ValueError(f'the cached store {out_dir} lacks layers '
                       f'{sorted(missing)}; delete it to extract them')
    if found.metadata.get('params_sha256') != extract.sha256_of_arrays(
        jax.tree_util.tree_map(np.asarray, net.params())):
      raise ValueError(f'the cached store {out_dir} holds features of other '
                       f'params than net {net.name!r} has now (retrained or '
                       'replaced); delete it to extract them again')
    return found
  if kind == 'whole':
    source = extract.whole_images(images)
  elif kind == 'gt':
    source = extract.gt_boxes(images)
  else:
    if proposals is None:
      raise ValueError("kind 'proposals' needs the proposals")
    source = extract.proposal_boxes(images, proposals)
  return extract.extract_features(
      net.checkpoint if net.step is None else net.params(), net.model_kwargs,
      source, tuple(layers), out_dir, batch_size=batch_size,
      warp_size=net.input_size, context=net.context, mean=net.mean,
      encoding=encoding,
      metadata={'net': net.name, 'step': net.step, 'split': split,
                'kind': kind})
