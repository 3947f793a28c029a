"""The `classify` task: layer-wise linear-SVM mAP on VOC 2007 (SPEC 5, 6).

Seeds Table 2.4 (GT-box classification per layer, pretrained / FT / FC-FT),
Table 4.1 (PASCAL-CLS per layer over the pretraining snapshots) and Table 5.1
(PASCAL-CLS per layer under the feature ablations) are all one computation,
run for every "cell" (net or snapshot, layer, ablation):

  features of trainval and test (the shared caches of `features.cache`)
  -> ablation (`analysis.ablations`, the same transform at train and test)
  -> scaling to mean L2 norm 20 on trainval (the factor reused on test,
     recomputed per ablation)
  -> 20 one-vs-rest linear SVMs in one solve (SPEC 4 objective, no mining)
  -> test scores -> VOC 11-point AP per class -> mAP.

Two evaluations (`config.eval`):

  pascal_cls  PASCAL-CLS: each whole image warped as one box is one example
              (feature kind 'whole'); image labels +1 / -1 / 0 (only
              difficult instances). The test AP ignores label-0 images, as
              VOCevalcls does. Training ignores them too by default
              (`label0='ignore'`), as the VOCdevkit's own example classifier
              does (it trains on `gt > 0` and `gt < 0` only); neither R-CNN
              nor DeCAF specifies otherwise. `label0='positive'|'negative'`
              is the other reading.
  gtbox       GT-box classification: every GT box is one example labelled
              by its class (kind 'gt'); difficult boxes are kept in training
              and test unless `include_difficult=False`.

Spatial ablations (sp-shuffle, sp-max, sp-max-bin, sm-bn-lc) are undefined on
the fc layers (a 1x1 map) and reported as '-'.

A third evaluation, `sun397`, fills seeds Table 2.2's pretrained SUN-397
cell (`sun397_probe`): the pretrained net has no SUN-397 classifier, so, as
DeCAF and the seeds did, one-vs-rest linear SVMs (the same solver and
scaling) are trained on its fc7 features of the train split and an image
gets the class of the highest score; top-1 accuracy on the test split. Its
images are fed as the finetuned nets' classification eval feeds them
(resize, centre crop), not warped as boxes, so its features are computed
here rather than in the box-warping feature stores; the result is cached in
`<workdir>/summary.json` with the settings it was computed with.

Outputs, cached so a rerun only computes missing cells:

  <workdir>/features/<net>[@<step>]/<split>_<kind>/      shared stores
  <workdir>/classify/<eval>/cells/<net>[@<step>]-<layer>-<ablation>/
      cell.json (AP per class, mAP, scale, the settings and net config it
      was computed with; written last), scores.npy (test scores [M, 20]),
      results/comp1_cls_test_<class>.txt (pascal_cls: devkit result files)
  <workdir>/classify/<eval>/<layout>/   the tables of one run, layout by_net
      (Table 2.4: columns nets), by_step (Table 4.1: snapshot steps) or
      by_ablation (Table 5.1: ablations); rows are layers:
      map.{csv,md}, ap_per_class.{csv,md} (every cell's class APs),
      summary.json
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Iterator, NamedTuple, Optional, Sequence

from absl import logging
import jax
import ml_collections
import numpy as np

from cnnjax import checkpoints
from cnnjax import config_lib
from cnnjax import metrics
from cnnjax import nets as nets_lib
from cnnjax import progress
from cnnjax import sharding
from cnnjax.analysis import ablations as ablations_lib
from cnnjax.analysis import probes
from cnnjax.data import datasets
from cnnjax.data import preprocess
from cnnjax.data import sources
from cnnjax.data import voc
from cnnjax.features import cache as feature_cache
from cnnjax.features import extract
from cnnjax.features import store as store_lib
from cnnjax.reporting import tables

# config.eval -> the feature-store kind of its examples.
EVALS = {'pascal_cls': 'whole', 'gtbox': 'gt'}
EVAL_TITLES = {'pascal_cls': 'PASCAL VOC 2007 image classification',
               'gtbox': 'VOC 2007 GT-box classification'}
# How PASCAL-CLS training treats images whose instances are all difficult.
LABEL0_MODES = ('ignore', 'positive', 'negative')
# Ablations that act on a map's positions: undefined on a 1x1 (fc) map.
SPATIAL_ABLATIONS = ('sp-shuffle', 'sp-max', 'sp-max-bin', 'sm-bn-lc')
VECTOR_LAYERS = ('fc6', 'fc7', 'fc8')
# Decoded float32 values per ablation call: bounds memory at any layer size.
CHUNK_ELEMENTS = 1 << 24
# Folded into the ablation key: train and test permutations are independent.
_SPLIT_CODES = {'trainval': 0, 'test': 1}
_SPLITS = ('trainval', 'test')
_CELL_JSON = 'cell.json'
_SCORES = 'scores.npy'
SUN397 = 'sun397'
SUN397_SUMMARY = 'summary.json'


class SvmSettings(NamedTuple):
  """SPEC 4's solver and feature scaling (R-CNN's values by default)."""
  C: float = 1e-3
  pos_weight: float = 2.0
  bias_scale: float = 10.0
  tol: float = 0.1
  target_norm: float = 20.0
  seed: int = 0


class Probe(NamedTuple):
  """One-vs-rest linear SVMs in the scaled feature space."""
  weights: np.ndarray   # [D, K]
  biases: np.ndarray    # [K]
  scale: float          # multiply raw (ablated) features by this first


class CellResult(NamedTuple):
  """The outcome of one (net, layer, ablation) cell on the test set."""
  ap: np.ndarray        # [K] 11-point AP per class
  mean_ap: float
  scores: np.ndarray    # [M, K] test scores
  scale: float


class Examples(NamedTuple):
  """The examples of one split: store rows and their class labels."""
  rows: np.ndarray      # int64 [n] rows of the split's feature store
  labels: np.ndarray    # int8 [n, K] in {+1, -1, 0 (ignored)}
  ids: Sequence[str]    # [n] the devkit image id of each example


def is_defined(layer: str, ablation: str) -> bool:
  """Whether `ablation` means anything on `layer` (no spatial ops on fc)."""
  return not (ablation in SPATIAL_ABLATIONS and layer in VECTOR_LAYERS)


def train_targets(labels: np.ndarray, label0: str = 'ignore'
                  ) -> tuple[np.ndarray, np.ndarray]:
  """SVM targets from {+1, -1, 0} labels, and which examples train.

  Args:
    labels: [N, K] +1 (present), -1 (absent), 0 (only difficult instances).
    label0: what a 0 label becomes: 'ignore' (left out of that class's
      problem), 'positive' or 'negative'.

  Returns:
    targets float32 [N, K] in {-1, +1} and sample_mask bool [N, K].

  Raises:
    ValueError: an unknown `label0`.
  """
  if label0 not in LABEL0_MODES:
    raise ValueError(f'label0={label0!r}; valid: {", ".join(LABEL0_MODES)}')
  labels = np.asarray(labels)
  zero_is_positive = label0 == 'positive'
  positive = (labels > 0) | ((labels == 0) & zero_is_positive)
  targets = np.where(positive, 1.0, -1.0).astype(np.float32)
  mask = (labels != 0) if label0 == 'ignore' else np.ones(labels.shape, bool)
  return targets, mask


def box_labels(classes: np.ndarray, num_classes: int) -> np.ndarray:
  """GT-box labels int8 [N, K]: +1 for the box's class, -1 for the others."""
  classes = np.asarray(classes).reshape(-1)
  return np.where(classes[:, None] == np.arange(num_classes), 1,
                  -1).astype(np.int8)


def ablated_chunks(view: store_lib.LayerView, rows: np.ndarray, ablation: str,
                   rng: jax.Array) -> Iterator[np.ndarray]:
  """Streams the ablated flat features [n, D] of `rows`, a chunk at a time.

  Randomised ablations (sp-shuffle) are keyed by the store row, so an
  example is transformed the same way whichever chunk it falls in.
  """
  rows = np.asarray(rows, np.int64)
  chunk = max(1, CHUNK_ELEMENTS // max(1, view.format.feature_size))
  for start in range(0, len(rows), chunk):
    part = rows[start:start + chunk]
    yield np.asarray(ablations_lib.apply_ablation(
        ablation, view.read(part), rng=rng, example_ids=part), np.float32)


def ablated_features(view: store_lib.LayerView, rows: np.ndarray,
                     ablation: str, rng: jax.Array) -> np.ndarray:
  """[n, D] ablated features of `rows` (see `ablated_chunks`)."""
  return np.concatenate(list(ablated_chunks(view, rows, ablation, rng)))


def fit_probe(features: np.ndarray, labels: np.ndarray, *,
              svm: SvmSettings = SvmSettings(),
              label0: str = 'ignore') -> Probe:
  """Scales to mean norm `svm.target_norm` and trains K SVMs in one solve.

  Args:
    features: [N, D] unscaled training features.
    labels: [N, K] in {+1, -1, 0} (see `train_targets`).
    svm: solver settings.
    label0: see `train_targets`.

  Returns:
    The probe (weights and biases act on `features * scale`).
  """
  if features.any():
    scale = probes.scale_features(features, svm.target_norm)
  else:
    # A dead layer (every unit zero on every example, e.g. a net that has
    # not learned): nothing to scale; the SVMs reduce to their biases and
    # the AP to that of constant scores, which is the honest answer.
    logging.warning('fit_probe: every training feature is zero (dead layer)')
    scale = 1.0
  targets, mask = train_targets(labels, label0)
  weights, biases = probes.fit_linear_svm(
      features * np.float32(scale), targets, C=svm.C,
      pos_weight=svm.pos_weight, bias_scale=svm.bias_scale, tol=svm.tol,
      sample_mask=mask, seed=svm.seed)
  return Probe(np.asarray(weights), np.asarray(biases), scale)


def probe_scores(probe: Probe, features: np.ndarray) -> np.ndarray:
  """[N, K] SVM scores of unscaled features [N, D]."""
  return np.asarray(probes.predict(
      probe.weights, probe.biases, features * np.float32(probe.scale)))


def evaluate_cell(train_view: store_lib.LayerView, train: Examples,
                  test_view: store_lib.LayerView, test: Examples,
                  ablation: str, *, svm: SvmSettings = SvmSettings(),
                  label0: str = 'ignore', seed: int = 0) -> CellResult:
  """One layer under one ablation: train on trainval, AP on test.

  Args:
    train_view: the layer in the trainval store.
    train: trainval rows and labels.
    test_view: the layer in the test store.
    test: test rows and labels (0 labels are ignored by the AP).
    ablation: a key of `ablations.ABLATIONS`.
    svm: solver and scaling settings.
    label0: training treatment of 0 labels (see `train_targets`).
    seed: key of randomised ablations (folded with the split).

  Returns:
    AP per class, mAP, test scores and the scale factor.
  """
  key = jax.random.key(seed)
  split_key = {split: jax.random.fold_in(key, code)
               for split, code in _SPLIT_CODES.items()}
  probe = fit_probe(
      ablated_features(train_view, train.rows, ablation, split_key['trainval']),
      train.labels, svm=svm, label0=label0)
  scores = np.concatenate([
      probe_scores(probe, chunk) for chunk in ablated_chunks(
          test_view, test.rows, ablation, split_key['test'])])   # [M, K]
  ap, mean_ap = metrics.cls_map(scores, test.labels)
  return CellResult(ap, mean_ap, scores, probe.scale)


def split_examples(eval_name: str, store: store_lib.FeatureStore,
                   images: Sequence[voc.VocImage],
                   include_difficult: bool = True) -> Examples:
  """The examples of one split of `eval_name` in its feature store.

  Raises:
    ValueError: an unknown eval, or a 'whole' store whose rows are not the
      images in order (a store of another image list).
  """
  num_classes = len(voc.VOC_CLASSES)
  image_ids = np.asarray([im.image_id for im in images])
  if eval_name == 'pascal_cls':
    stored = store.rows('image_id').astype(str)
    if not np.array_equal(stored, image_ids):
      raise ValueError(f'the store {store.directory} does not hold one row '
                       f'per image of this split ({len(stored)} rows, '
                       f'{len(image_ids)} images); delete it to re-extract')
    return Examples(np.arange(len(images)), voc.cls_labels(images),
                    image_ids.tolist())
  if eval_name == 'gtbox':
    keep = np.ones(store.num_rows, bool)
    if not include_difficult:
      keep = ~store.rows('difficult').astype(bool)
    rows = np.flatnonzero(keep)
    return Examples(rows, box_labels(store.rows('label')[rows], num_classes),
                    store.rows('image_id')[rows].astype(str).tolist())
  raise ValueError(f'unknown eval {eval_name!r}; valid: {", ".join(EVALS)}')


@dataclasses.dataclass(frozen=True)
class Column:
  """One network of the run: a named net, or a pretraining snapshot."""
  label: str            # the table column (net name or study step)
  net: str              # a name of nets.NET_NAMES
  step: Optional[int]   # a pretraining checkpoint step (None: the net's own)

  @property
  def tag(self) -> str:
    return self.net if self.step is None else f'{self.net}@{self.step}'


def columns_of(config: ml_collections.ConfigDict) -> list[Column]:
  """The nets of the run: `config.snapshots` if set, else `nets_to_run`."""
  if config.snapshots:
    labels = config.get('snapshot_columns') or [str(s)
                                                for s in config.snapshots]
    if len(labels) != len(config.snapshots):
      raise ValueError(f'config.snapshot_columns has {len(labels)} labels for '
                       f'{len(config.snapshots)} config.snapshots')
    return [Column(str(label), 'pretrained', int(step))
            for label, step in zip(labels, config.snapshots)]
  return [Column(name, name, None) for name in config.nets_to_run]


def cells_of(config: ml_collections.ConfigDict,
             column: Column) -> list[tuple[str, str]]:
  """(layer, ablation) pairs computed for one column, in table order."""
  wanted = config.get('net_layers', {}).get(column.net, config.layers)
  return [(layer, ablation) for layer in config.layers if layer in wanted
          for ablation in config.ablations if is_defined(layer, ablation)]


def table_column(column: Column, ablation: str, columns: Sequence[Column],
                 ablations: Sequence[str]) -> str:
  """The map table's column: the net, the ablation, or both when both vary."""
  if len(ablations) == 1:
    return column.label
  if len(columns) == 1:
    return ablation
  return f'{column.label}/{ablation}'


def _check_config(config: ml_collections.ConfigDict) -> None:
  if config.eval not in EVALS:
    raise ValueError(f'config.eval={config.eval!r}; valid: {", ".join(EVALS)}')
  if config.label0 not in LABEL0_MODES:
    raise ValueError(f'config.label0={config.label0!r}; valid: '
                     f'{", ".join(LABEL0_MODES)}')
  missing = [layer for layer in config.layers
             if layer not in config.extract.layers]
  if missing:
    raise ValueError(f'config.layers {missing} are not among '
                     f'config.extract.layers={tuple(config.extract.layers)}')
  unknown = [a for a in config.ablations if a not in ablations_lib.ABLATIONS]
  if unknown:
    raise ValueError(f'config.ablations {unknown} unknown; valid: '
                     f'{", ".join(ablations_lib.ABLATIONS)}')
  if not config.snapshots:
    unknown = [n for n in config.nets_to_run if n not in nets_lib.NET_NAMES]
    if unknown:
      raise ValueError(f'config.nets_to_run {unknown} unknown; valid: '
                       f'{", ".join(nets_lib.NET_NAMES)}')


def _net_identity(nets: ml_collections.ConfigDict, column: Column) -> dict:
  """The config that defines the column's net (a new net: new results)."""
  identity = {'input_size': nets.input_size, 'mean_path': nets.mean_path}
  if column.net == 'pretrained':
    step = nets.pretrained_step if column.step is None else column.step
    return {**identity, 'pretrained': nets.pretrained, 'step': step}
  finetune = nets.finetune.get(column.net)
  return {**identity, 'finetune': finetune.to_dict() if finetune else None}


def _cell_settings(config: ml_collections.ConfigDict, column: Column,
                   layer: str, ablation: str) -> dict:
  """What a cached cell must have been computed with to be reused."""
  settings = {'eval': config.eval, 'net': column.tag, 'layer': layer,
              'ablation': ablation, 'svm': config.svm.to_dict(),
              'seed': config.seed, 'data': config.data.to_dict(),
              'net_config': _net_identity(config.nets, column)}
  if config.eval == 'pascal_cls':
    settings['label0'] = config.label0
  else:
    settings['include_difficult'] = config.include_difficult
  # As it reads back from JSON (tuples -> lists), to compare with a cache.
  return json.loads(json.dumps(settings, sort_keys=True, default=str))


def _read_cached(path: str, settings: dict) -> Optional[dict]:
  """The cached record at `path` if it was computed with `settings`."""
  if not os.path.exists(path):
    return None
  with open(path) as f:
    record = json.load(f)
  if record.get('settings') != settings:
    logging.info('classify: %s was computed with other settings; recomputing',
                 path)
    return None
  return record


def _write_cell(cell_dir: str, settings: dict, result: CellResult,
                eval_name: str, test: Examples, seconds: float) -> dict:
  """Scores, devkit files (PASCAL-CLS), then cell.json last (the marker)."""
  os.makedirs(cell_dir, exist_ok=True)
  scores_path = os.path.join(cell_dir, _SCORES)
  tmp = f'{scores_path}.tmp{os.getpid()}'
  with open(tmp, 'wb') as f:
    np.save(f, result.scores.astype(np.float32))
  os.replace(tmp, scores_path)
  if eval_name == 'pascal_cls':
    for k, name in enumerate(voc.VOC_CLASSES):
      metrics.write_cls_results(os.path.join(cell_dir, 'results'), name,
                                test.ids, result.scores[:, k])
  record = {'settings': settings, 'mAP': result.mean_ap * 100,
            'ap': dict(zip(voc.VOC_CLASSES, (result.ap * 100).tolist())),
            'scale': float(result.scale), 'num_test': len(test.rows),
            'seconds': seconds}
  config_lib.write_json_atomic(os.path.join(cell_dir, _CELL_JSON), record)
  return record


def _resolve_net(config: ml_collections.ConfigDict, column: Column,
                 workdir: str) -> nets_lib.Net:
  """The column's net; a snapshot at the latest step shares its features."""
  net = nets_lib.resolve(config, column.net, workdir)
  if column.step is None:
    return net
  if net.step is None and column.step == checkpoints.latest_step(
      net.checkpoint):
    return net
  return dataclasses.replace(net, step=column.step)


class _Eta:
  """Logs cells done and the time left after each one."""

  def __init__(self, total: int):
    self.total, self.done, self.start = total, 0, time.monotonic()

  def step(self, what: str) -> None:
    self.done += 1
    elapsed = time.monotonic() - self.start
    left = elapsed / self.done * (self.total - self.done)
    logging.info('classify: %d/%d cells (%s), %.0f s elapsed, ETA %.0f s',
                 self.done, self.total, what, elapsed, left)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs (or resumes) one layer-wise classification experiment.

  Args:
    config: see configs/pascal_cls.py and configs/gtbox_cls.py.
    workdir: shared with the other experiments (nets, feature caches).

  Returns:
    The summary (also written to <workdir>/classify/<eval>/<layout>/; for
    `sun397`, see `sun397_probe`).
  """
  if config.eval == SUN397:
    return sun397_probe(config, workdir)
  _check_config(config)
  eval_name, kind = config.eval, EVALS[config.eval]
  out_dir = os.path.join(workdir, 'classify', eval_name)
  datasets.check_voc(config.data)
  nets_lib.check_pretrained(config)
  images = {split: datasets.voc_split(config.data, split) for split in _SPLITS}
  logging.info('classify %s: %d trainval, %d test images', eval_name,
               len(images['trainval']), len(images['test']))
  svm = SvmSettings(**config.svm.to_dict())
  columns = columns_of(config)
  eta = _Eta(sum(len(cells_of(config, c)) for c in columns))
  records = {}                        # (column label, layer, ablation) -> dict
  for column in columns:
    cells = cells_of(config, column)
    todo = []
    for layer, ablation in cells:
      settings = _cell_settings(config, column, layer, ablation)
      cell_dir = os.path.join(out_dir, 'cells',
                              f'{column.tag}-{layer}-{ablation}')
      cached = _read_cached(os.path.join(cell_dir, _CELL_JSON), settings)
      if cached is None:
        todo.append((layer, ablation, settings, cell_dir))
      else:
        records[column.label, layer, ablation] = cached
        eta.step(f'{column.tag} {layer} {ablation}, cached')
    if not todo:
      continue
    net = _resolve_net(config, column, workdir)
    stores = {split: feature_cache.features(
        net, images[split], split, kind, config.extract.layers, workdir,
        batch_size=config.extract.batch_size,
        encoding=config.extract.encoding) for split in _SPLITS}
    examples = {split: split_examples(eval_name, stores[split], images[split],
                                      config.include_difficult)
                for split in _SPLITS}
    for layer, ablation, settings, cell_dir in todo:
      start = time.monotonic()
      result = evaluate_cell(
          stores['trainval'].layer(layer), examples['trainval'],
          stores['test'].layer(layer), examples['test'], ablation, svm=svm,
          label0=config.label0, seed=config.seed)
      record = _write_cell(cell_dir, settings, result, eval_name,
                           examples['test'], time.monotonic() - start)
      records[column.label, layer, ablation] = record
      eta.step(f'{column.tag} {layer} {ablation}: mAP {record["mAP"]:.1f}')
  return write_outputs(config, out_dir, columns, records)


def layout_name(config: ml_collections.ConfigDict) -> str:
  """What the map table's columns vary over: its folder name.

  by_step (Table 4.1), by_ablation (Table 5.1), by_net (Table 2.4), or
  by_net_ablation; runs of different layouts share the cells of the eval
  but keep their own tables.
  """
  if config.snapshots:
    varies = 'step'
  elif len(config.nets_to_run) > 1 or len(config.ablations) == 1:
    varies = 'net'
  else:
    varies = ''
  if len(config.ablations) > 1:
    varies = f'{varies}_ablation' if varies else 'ablation'
  return f'by_{varies}'


def write_outputs(config: ml_collections.ConfigDict, eval_dir: str,
                  columns: Sequence[Column], records: dict) -> dict:
  """The map table, per-class table and summary from the cell records."""
  out_dir = os.path.join(eval_dir, layout_name(config))
  ablations = tuple(config.ablations)
  header = [table_column(column, ablation, columns, ablations)
            for column in columns for ablation in ablations]
  map_rows = {layer: {} for layer in config.layers}
  per_class = {}
  for layer in config.layers:
    for column in columns:
      for ablation in ablations:
        record = records.get((column.label, layer, ablation))
        if record is None:
          continue
        name = table_column(column, ablation, columns, ablations)
        map_rows[layer][name] = record['mAP']
        row = f'{column.label}/{layer}' + (
            '' if ablation == 'unroll' else f'/{ablation}')
        per_class[row] = np.array([record['ap'][c] for c in voc.VOC_CLASSES])
  title = f'{EVAL_TITLES[config.eval]}, test mAP (%)'
  if config.get('paper_table'):
    title += f' (seeds Table {config.paper_table})'
  tables.write_table(os.path.join(out_dir, 'map'), map_rows, header,
                     title=title, row_header='layer')
  tables.write_class_table(os.path.join(out_dir, 'ap_per_class'), per_class,
                           title=f'{EVAL_TITLES[config.eval]}, test AP (%)')
  summary = {
      'eval': config.eval, 'paper_table': config.get('paper_table', ''),
      'layout': layout_name(config),
      'columns': header, 'map': map_rows,
      'cells': [{'column': label, 'layer': layer, 'ablation': ablation,
                 'mAP': record['mAP'], 'ap': record['ap'],
                 'net': record['settings']['net']}
                for (label, layer, ablation), record in records.items()]}
  config_lib.write_json_atomic(os.path.join(out_dir, 'summary.json'), summary)
  print(tables.markdown_table(map_rows, header, row_header='layer'))
  print(f'({out_dir})')
  return summary


# ------------------------------------------------ SUN-397 (Table 2.2) ---

def multiclass_accuracy(scores: np.ndarray, labels: np.ndarray
                        ) -> tuple[float, float]:
  """Top-1 and mean per-class top-1 of the highest-scoring class.

  Args:
    scores: [N, K] one score per class.
    labels: int [N] true classes.

  Returns:
    (top-1, mean over the classes present of their top-1), as fractions.
  """
  labels = np.asarray(labels)
  hits = np.argmax(scores, axis=1) == labels                      # [N]
  present = np.unique(labels)
  per_class = [hits[labels == k].mean() for k in present]
  return float(hits.mean()), float(np.mean(per_class))


def centre_crop_features(net: nets_lib.Net, source: Sequence[dict],
                         layer: str, *, batch_size: int, resize: int,
                         mean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """`layer` of every image of a classification source, fed as the eval is.

  Each image is resized to `resize` (aspect ignored), mean-subtracted and
  centre-cropped to the net's input size (`preprocess.eval_batches`: Caffe's
  test-time transform, the one the finetuned nets are evaluated with).

  Returns:
    features float32 [N, D] (flattened) and labels int32 [N], in source
    order.
  """
  mesh = sharding.data_mesh()
  # The feature extractor's cached forward (only `layer` is computed).
  forward = extract.forward_fn(
      tuple(sorted(net.model_kwargs.items())), (layer,), mesh)
  batch_sharding = jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec('data'))
  params = jax.device_put(net.params(), jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec()))
  line = progress.Progress(f'{layer} of {net.name}', len(source), 'images',
                           every_s=30.0)
  features, labels = [], []
  for batch in preprocess.eval_batches(source, batch_size, resize=resize,
                                       crop=net.input_size, mean=mean):
    out = forward(params, jax.make_array_from_process_local_data(
        batch_sharding, batch['image']))
    real = batch['mask']                                 # [B] not padding
    values = np.asarray(out[layer], np.float32)
    features.append(values.reshape(len(values), -1)[real])   # [b, D]
    labels.append(batch['label'][real])
    line.update(int(real.sum()))
  return np.concatenate(features), np.concatenate(labels)


def sun397_probe(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Seeds Table 2.2's pretrained SUN-397 cell: SVMs on `config.layer`.

  Features of the SUN-397 train and test splits under the pretrained net
  -> scaled to mean norm `svm.target_norm` on train -> one one-vs-rest
  linear SVM per class in one solve (SPEC 4 objective) -> each test image
  gets the class of its highest score -> top-1 and mean per-class top-1.

  Args:
    config: see configs/sun397_probe.py (layer, input as the finetuning's,
      nets, extract.batch_size, svm).
    workdir: where the split is recorded and `summary.json` written; a rerun
      with the same settings returns the cached summary.

  Returns:
    The summary: accuracy and mean_class_accuracy (%), the example counts,
    the scale factor, the settings and the seconds it took.
  """
  inp = config.input
  settings = json.loads(json.dumps(
      {'eval': SUN397, 'layer': config.layer, 'svm': config.svm.to_dict(),
       'input': inp.to_dict(),
       'net_config': _net_identity(config.nets,
                                   Column('pretrained', 'pretrained', None))},
      sort_keys=True, default=str))
  path = os.path.join(workdir, SUN397_SUMMARY)
  cached = _read_cached(path, settings)
  if cached is not None:
    logging.info('sun397: cached %s', path)
    return cached
  start = time.monotonic()
  net = nets_lib.resolve(config, 'pretrained', workdir)
  mean = preprocess.mean_image(inp.mean_path or None, inp.resize)
  splits = {split: sources.classification_source(
      inp.dataset, split, inp.data_dir or None, workdir=workdir,
      demo_options=inp.demo.to_dict()) for split in ('train', 'test')}
  num_classes = splits['train'].num_classes
  (train_x, train_y), (test_x, test_y) = (
      centre_crop_features(net, splits[split], config.layer,
                           batch_size=config.extract.batch_size,
                           resize=inp.resize, mean=mean)
      for split in ('train', 'test'))
  logging.info('sun397: %s %s, %d train / %d test images, %d classes',
               config.layer, train_x.shape, len(train_y), len(test_y),
               num_classes)
  probe = fit_probe(train_x, box_labels(train_y, num_classes),
                    svm=SvmSettings(**config.svm.to_dict()))
  top1, mean_class = multiclass_accuracy(probe_scores(probe, test_x), test_y)
  summary = {'settings': settings, 'net': 'pretrained', 'layer': config.layer,
             'accuracy': 100 * top1, 'mean_class_accuracy': 100 * mean_class,
             'num_train': len(train_y), 'num_test': len(test_y),
             'num_classes': num_classes, 'scale': float(probe.scale),
             'seconds': time.monotonic() - start}
  config_lib.write_json_atomic(path, summary)
  print(f'SUN-397 pretrained {config.layer} + linear SVMs: test top-1 '
        f'{summary["accuracy"]:.1f}% (mean per class '
        f'{summary["mean_class_accuracy"]:.1f}%), {len(test_y)} images '
        f'({path})')
  return summary
