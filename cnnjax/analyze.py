"""The `analyze` task: the study's chapters 2-4 as tables and figures (SPEC 6).

  which=entropy      seeds Table 2.1, figs 2-1 and 2-2: label, weighted and
                     spMax label entropy of every filter of the study layers
                     over the VOC07 test GT boxes; AuE, MCAuE and its percent
                     decrease after finetuning (FT, FC-FT vs pretrained).
  which=selectivity  seeds figs 3-1 and 3-2: pool5 precision curves of the 5
                     most selective filters per class, and PR curves of the
                     5 filters per class with the best AP (spatial max).
  which=subsets      seeds fig 3-4, Table 3.1, fig 3-5: GT-box classification
                     (trainval -> test) with greedy subsets of pool5 filters.
  which=dynamics     seeds fig 4-1: conv1 filters of the pretraining
                     snapshots, training loss and validation top-1.
  which=similarity   beyond the paper: linear CKA per layer between the
                     pretrained and the finetuned nets (test GT boxes), and
                     between consecutive pretraining snapshots (test images).
  which=all          every analysis above.

Inputs come from the workdir's shared caches, so the classification and
detection tasks reuse what an analysis extracted and vice versa: nets from
`cnnjax.nets` (finetuned on demand), features from `cnnjax.features.cache`
(kinds 'gt' and 'whole', every layer of `config.extract.layers` in one pass).
Layers are streamed from their stores in row chunks, so memory stays at a
chunk whatever the number of boxes (VOC07 test: ~15K boxes, pool1 70K
values each).

Outputs, per analysis, in <workdir>/analyses/<name>/: CSV + markdown tables,
PNG figures, summary.json, and cache/ with the computed arrays (a rerun only
redraws; other settings or re-extracted features recompute).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from typing import Any, Mapping, Optional, Sequence

from absl import logging
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from cnnjax import checkpoints
from cnnjax import config_lib
from cnnjax import nets as nets_lib
from cnnjax import stepcache
from cnnjax.analysis import ablations
from cnnjax.analysis import dynamics
from cnnjax.analysis import entropy
from cnnjax.analysis import selectivity
from cnnjax.analysis import similarity
from cnnjax.analysis import subsets
from cnnjax.data import datasets
from cnnjax.data.voc import VOC_CLASSES
from cnnjax.features import cache as feature_cache
from cnnjax.features import store as store_lib
from cnnjax.reporting import figures
from cnnjax.reporting import tables

ANALYSES = ('entropy', 'selectivity', 'subsets', 'dynamics', 'similarity')
NUM_CLASSES = len(VOC_CLASSES)
REFERENCE_NET = 'pretrained'       # percent decrease and CKA are against it

Stores = Mapping[str, store_lib.FeatureStore]


# ---------------------------------------------------------------- helpers ---

class _Progress:
  """Logs each finished step of a long loop with elapsed time and ETA."""

  def __init__(self, what: str, total: int):
    self._what, self._total, self._done = what, total, 0
    self._start = time.time()

  def step(self, label: str) -> None:
    self._done += 1
    elapsed = time.time() - self._start
    eta = elapsed / self._done * (self._total - self._done)
    logging.info('%s %d/%d (%s): %.0fs elapsed, ETA %.0fs', self._what,
                 self._done, self._total, label, elapsed, eta)


def example_mask(store: store_lib.FeatureStore,
                 include_difficult: bool) -> np.ndarray:
  """bool [N]: the rows an analysis uses (difficult GT boxes optional)."""
  keep = np.ones(store.num_rows, bool)
  if not include_difficult and 'difficult' in store.row_fields:
    keep &= ~store.rows('difficult').astype(bool)
  return keep


def box_labels(store: store_lib.FeatureStore) -> np.ndarray:
  """int32 [N] class index (into VOC_CLASSES) of every GT-box row."""
  labels = store.rows('label').astype(np.int32)
  if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
    raise ValueError(f'{store.directory}: labels outside [0, {NUM_CLASSES}); '
                     'the analyses need a GT-box store (kind "gt")')
  return labels


def _rows_per_chunk(view: store_lib.LayerView, chunk_elements: int) -> int:
  return max(1, chunk_elements // max(1, math.prod(view.shape[1:])))


def spatial_max(view: store_lib.LayerView,
                chunk_elements: int = entropy.DEFAULT_CHUNK_ELEMENTS
                ) -> np.ndarray:
  """Each row's per-filter spatial max, streamed: [N, H, W, F] -> [N, F]."""
  rows = _rows_per_chunk(view, chunk_elements)
  return np.concatenate([np.asarray(ablations.sp_max(chunk))
                         for _, chunk in view.iter_chunks(rows)])


def check_aligned(a: store_lib.FeatureStore, b: store_lib.FeatureStore) -> None:
  """Raises ValueError unless both stores hold the same examples in order."""
  for field in ('image_id', 'box'):
    if field in a.row_fields and field in b.row_fields and not np.array_equal(
        a.rows(field), b.rows(field)):
      raise ValueError(f'{a.directory} and {b.directory} hold different '
                       f'examples (row field {field!r} differs)')
  if a.num_rows != b.num_rows:
    raise ValueError(f'{a.directory} has {a.num_rows} rows, {b.directory} '
                     f'{b.num_rows}')


def minibatch_cka(view_a: store_lib.LayerView, view_b: store_lib.LayerView,
                  rows: np.ndarray, batch_size: int) -> float:
  """Minibatch linear CKA (Nguyen et al. 2021) of two layers, streamed.

  The unbiased HSIC statistics of consecutive row batches are summed, so
  memory is one batch of each layer whatever the number of rows. Batches
  are near-equal splits of `rows` with at least `batch_size` rows each (or
  all rows in one batch when fewer).

  Args:
    view_a, view_b: two layers over the same examples (any widths).
    rows: int [M] row indices to use, M >= 4.
    batch_size: rows per batch.

  Returns:
    CKA in [0, 1] (NaN if a layer is constant over the rows).
  """
  if len(rows) < 4:
    raise ValueError(f'minibatch CKA needs at least 4 rows, got {len(rows)}')
  total = np.zeros(3, np.float64)
  for part in np.array_split(rows, max(1, len(rows) // batch_size)):
    total += np.asarray(similarity.cka_statistics(view_a.read(part),
                                                  view_b.read(part)),
                        np.float64)
  return float(similarity.cka_from_statistics(total))


def _per_class(values) -> dict[str, Any]:
  return dict(zip(VOC_CLASSES, np.asarray(values).tolist()))


# ------------------------------------------------- entropy (seeds ch. 2) ---

def _filter_aue(view: store_lib.LayerView, labels: np.ndarray,
                keep: np.ndarray, method: str, num_thresholds: int,
                thresholds: str, chunk_elements: int) -> dict[str, Any]:
  """{'aue': [F]} of one layer and method, streamed from the store."""
  _, statistics = entropy.threshold_statistics(
      view, labels, NUM_CLASSES, method, num_thresholds, thresholds,
      valid=None if keep.all() else keep, chunk_elements=chunk_elements)
  return {'aue': entropy.aue(entropy.entropy_from_statistics(statistics))}


def _percent_decrease(pre: float, finetuned: float) -> Optional[float]:
  """Seeds eq. 2.1, or None where it is undefined.

  A reference MCAuE of 0 happens when the most selective filters are dead
  (constant zero: their weighted entropy is 0 by SPEC 6); no percentage
  of 0 exists, and the table shows '-' there rather than inf or NaN.
  """
  if pre == 0:
    return None
  return float(entropy.percent_decrease(pre, finetuned))


def entropy_report(stores: Stores, out_dir: str, *, layers: Sequence[str],
                   methods: Sequence[str] = entropy.METHODS,
                   num_thresholds: int = 100, thresholds: str = 'linear',
                   fractions: Sequence[float] = entropy.TABLE_FRACTIONS,
                   curve_points: int = entropy.CURVE_POINTS,
                   include_difficult: bool = True,
                   chunk_elements: int = entropy.DEFAULT_CHUNK_ELEMENTS
                   ) -> dict[str, Any]:
  """Seeds Table 2.1 and figs 2-1, 2-2 from GT-box feature stores.

  Per net, layer and method the filters' entropy curves are streamed from
  the store (min/max pass, statistics pass) and reduced to AuE, cached.

  Args:
    stores: net name -> its store of VOC07 test GT boxes; percent decreases
      are reported for every net against REFERENCE_NET when present.
    out_dir: where tables, figures and cache/ go.
    layers: layers of the stores to analyse.
    methods: entropy methods (entropy.METHODS).
    num_thresholds, thresholds: the entropy curve's grid (SPEC 6).
    fractions: Table 2.1's fractions of the filters.
    curve_points: fig 2-2's points k / curve_points.
    include_difficult: keep GT boxes flagged difficult.
    chunk_elements: activation values per streamed chunk.

  Returns:
    The summary: 'table_2_1' {net: {layer: {'<method>@<fraction>': %}}},
    'mcaue' {'<net>/<layer>': {...}}, 'examples' {net: rows}, 'files'.
  """
  nets = list(stores)
  aue = {m: {n: {} for n in nets} for m in methods}       # m -> n -> l -> [F]
  progress = _Progress('entropy', len(nets) * len(layers) * len(methods))
  examples = {}
  for net in nets:
    store = stores[net]
    labels = box_labels(store)
    keep = example_mask(store, include_difficult)
    examples[net] = int(keep.sum())
    for layer in layers:
      for method in methods:
        aue[method][net][layer] = stepcache.cached_arrays(
            os.path.join(out_dir, 'cache', net, f'{layer}_{method}.npz'),
            functools.partial(_filter_aue, store.layer(layer), labels, keep,
                              method, num_thresholds, thresholds,
                              chunk_elements),
            features=stepcache.store_signature(store),
            num_thresholds=num_thresholds, thresholds=thresholds,
            include_difficult=include_difficult)['aue']
        progress.step(f'{net} {layer} {method}')

  mcaue = {m: {n: {l: entropy.mcaue(aue[m][n][l]) for l in layers}
               for n in nets} for m in methods}
  at = {m: {n: {l: np.asarray(entropy.mcaue_at(mcaue[m][n][l], fractions))
                for l in layers} for n in nets} for m in methods}
  columns = [f'{m}@{f}' for m in methods for f in fractions]
  files = []
  mcaue_rows = {f'{n}/{l}': {f'{m}@{f}': float(at[m][n][l][i])
                             for m in methods for i, f in enumerate(fractions)}
                for n in nets for l in layers}
  files += tables.write_table(
      os.path.join(out_dir, 'mcaue'), mcaue_rows, columns, digits=3,
      row_header='net/layer', title='MCAuE (bits) of the most selective '
      'fraction of filters, VOC07 test GT boxes')
  table_2_1 = {}
  for net in nets:
    if net == REFERENCE_NET or REFERENCE_NET not in nets:
      continue
    table_2_1[net] = {
        l: {f'{m}@{f}': _percent_decrease(at[m][REFERENCE_NET][l][i],
                                          at[m][net][l][i])
            for m in methods for i, f in enumerate(fractions)}
        for l in layers}
    files += tables.write_table(
        os.path.join(out_dir, f'table_2_1_{net}'), table_2_1[net], columns,
        digits=2, row_header='layer',
        title=f'Percent decrease in MCAuE, {REFERENCE_NET} -> {net} '
        '(seeds Table 2.1; positive = more selective after finetuning)')

  for method in methods:
    files.append(figures.aue_histograms(
        os.path.join(out_dir, f'fig2-1_aue_{method}.png'), aue[method],
        title=f'AuE distribution, {figures.METHOD_LABELS[method]} '
        '(seeds fig 2-1)'))
  points = np.arange(1, curve_points + 1) / curve_points
  curves = {m: {n: {l: np.asarray(entropy.mcaue_at(mcaue[m][n][l], points))
                    for l in layers} for n in nets} for m in methods}
  files.append(figures.mcaue_curves(
      os.path.join(out_dir, 'fig2-2_mcaue.png'), curves, points,
      title='MCAuE vs fraction of filters (seeds fig 2-2)'))
  return {'table_2_1': table_2_1, 'mcaue': mcaue_rows, 'examples': examples,
          'files': [os.path.basename(f) for f in files]}


# -------------------------------------------- grandmother cells (ch. 3) ---

def _filter_selectivity(view: store_lib.LayerView, labels: np.ndarray,
                        keep: np.ndarray, top: int, num_thresholds: int,
                        thresholds: str, chunk_elements: int
                        ) -> dict[str, Any]:
  """Selectivity and AP of every filter, the top ones' curves (figs 3-1, 3-2).

  Args:
    view: the layer's [N, H, W, F] maps (spatial max taken, streamed).
    labels: [M] classes of the kept rows.
    keep: bool [N], the rows used.
    top: filters kept per class.
    num_thresholds, thresholds: the precision curve's grid.
    chunk_elements: activation values per streamed chunk.

  Returns:
    'selectivity', 'ap' [F, C]; 'selective', 'best' [C, k] filters by
    selectivity / AP, best first; 'precision', 'examples' [C, k, T] the
    selective filters' precision curves and examples per threshold;
    'pr_precision', 'pr_recall' [C, k, M] along the best filters' rankings.
  """
  scores = spatial_max(view, chunk_elements)[keep]                   # [M, F]
  _, precision, samples = selectivity.precision_curves(
      scores, labels, NUM_CLASSES, 'spmax', num_thresholds, thresholds)
  area = np.asarray(selectivity.selectivity(precision))              # [F, C]
  ap = np.asarray(selectivity.filter_average_precision(
      scores, labels, NUM_CLASSES))                                  # [F, C]
  selective = np.asarray(selectivity.top_filters(area, top))         # [C, k]
  best = np.asarray(selectivity.top_filters(ap, top))                # [C, k]
  by_class = np.asarray(precision).transpose(2, 0, 1)                # [C, F, T]
  pr_precision, pr_recall = selectivity.pr_curves(scores, labels, best,
                                                  NUM_CLASSES)       # [C, k, M]
  return {'selectivity': area, 'ap': ap, 'selective': selective,
          'best': best,
          'precision': np.take_along_axis(by_class, selective[:, :, None],
                                          axis=1),
          'examples': np.asarray(samples)[selective],
          'pr_precision': pr_precision, 'pr_recall': pr_recall}


def selectivity_report(stores: Stores, out_dir: str, *, layer: str = 'pool5',
                       num_thresholds: int = 100, thresholds: str = 'linear',
                       top: int = selectivity.TOP_FILTERS,
                       max_recall: float = 0.25,
                       include_difficult: bool = True,
                       chunk_elements: int = entropy.DEFAULT_CHUNK_ELEMENTS
                       ) -> dict[str, Any]:
  """Seeds figs 3-1 and 3-2 from GT-box feature stores.

  Every example scores by its spatial max (SPEC 6). Per net: precision
  curves and their area (selectivity) for every filter and class, the top
  filters per class by selectivity; per-filter AP, the top filters by AP
  and their PR curves.

  Args:
    stores: net name -> its store of VOC07 test GT boxes.
    out_dir: where tables, figures and cache/ go.
    layer: the layer (pool5 in the seeds).
    num_thresholds, thresholds: the precision curve's threshold grid.
    top: filters shown per class.
    max_recall: fig 3-2's recall axis ends here (0.25 in the seeds).
    include_difficult: keep GT boxes flagged difficult.
    chunk_elements: activation values per streamed chunk.

  Returns:
    The summary: per net and class the best filter's selectivity and AP
    ('selectivity' {net: {class: value}}, 'ap'), the mean over classes,
    'files'.
  """
  results = {}
  for net, store in stores.items():
    keep = example_mask(store, include_difficult)
    labels = box_labels(store)[keep]

    results[net] = stepcache.cached_arrays(
        os.path.join(out_dir, 'cache', f'{net}_{layer}.npz'),
        functools.partial(_filter_selectivity, store.layer(layer), labels,
                          keep, top, num_thresholds, thresholds,
                          chunk_elements),
        features=stepcache.store_signature(store),
        num_thresholds=num_thresholds, thresholds=thresholds, top=top,
        include_difficult=include_difficult)

  classes = np.arange(NUM_CLASSES)
  best_selectivity = {net: r['selectivity'][r['selective'][:, 0], classes]
                      for net, r in results.items()}                 # [C]
  best_ap = {net: r['ap'][r['best'][:, 0], classes]
             for net, r in results.items()}                          # [C]
  rows = {}
  for k, name in enumerate((*VOC_CLASSES, 'mean')):
    row = {}
    for net in results:
      pick = slice(None) if name == 'mean' else k
      row[f'{net}/selectivity'] = 100 * float(
          np.mean(best_selectivity[net][pick]))
      row[f'{net}/AP'] = 100 * float(np.mean(best_ap[net][pick]))
    rows[name] = row
  columns = [f'{net}/{what}' for what in ('selectivity', 'AP')
             for net in results]
  files = list(tables.write_table(
      os.path.join(out_dir, 'best_filters'), rows, columns, row_header='class',
      title=f'{layer}: the best single filter per class, selectivity (area '
      'under the precision curve, %) and AP (%) on VOC07 test GT boxes'))
  for net, r in results.items():
    listing = {
        name: {'selective filters': ' '.join(map(str, r['selective'][k])),
               'best-AP filters': ' '.join(map(str, r['best'][k]))}
        for k, name in enumerate(VOC_CLASSES)}
    files += tables.write_table(
        os.path.join(out_dir, f'top_filters_{net}'), listing,
        ['selective filters', 'best-AP filters'], row_header='class',
        title=f'{net} {layer}: filter indices, best first')

  files.append(figures.precision_curves(
      os.path.join(out_dir, 'fig3-1_precision.png'),
      {net: (r['examples'], r['precision']) for net, r in results.items()},
      VOC_CLASSES, title=f'{layer}: precision of the {top} most selective '
      'filters per class (seeds fig 3-1)'))
  files.append(figures.filter_pr_curves(
      os.path.join(out_dir, 'fig3-2_pr.png'),
      {net: (r['pr_recall'], r['pr_precision']) for net, r in results.items()},
      VOC_CLASSES, max_recall=max_recall,
      title=f'{layer}: PR curves of the {top} best filters per class by AP '
      '(seeds fig 3-2)'))
  return {'selectivity': {n: _per_class(v)
                          for n, v in best_selectivity.items()},
          'ap': {n: _per_class(v) for n, v in best_ap.items()},
          'mean_selectivity': {n: float(v.mean())
                               for n, v in best_selectivity.items()},
          'mean_ap': {n: float(v.mean()) for n, v in best_ap.items()},
          'files': [os.path.basename(f) for f in files]}


def _greedy_subsets(train_store: store_lib.FeatureStore,
                    test_store: store_lib.FeatureStore, layer: str,
                    sizes: Sequence[int], top_overlap: int,
                    include_difficult: bool, chunk_elements: int,
                    svm: Mapping[str, Any]) -> dict[str, Any]:
  """`subsets.greedy_filter_subsets` on the spatial max of two stores."""
  split = []
  for store in (train_store, test_store):
    keep = example_mask(store, include_difficult)
    split += [spatial_max(store.layer(layer), chunk_elements)[keep],
              box_labels(store)[keep]]
  return subsets.greedy_filter_subsets(*split, NUM_CLASSES, sizes, top_overlap,
                                       **svm)


def subsets_report(train_stores: Stores, test_stores: Stores, out_dir: str, *,
                   layer: str = 'pool5',
                   sizes: Sequence[int] = subsets.SUBSET_SIZES,
                   top_overlap: int = subsets.TOP_OVERLAP,
                   include_difficult: bool = True,
                   chunk_elements: int = entropy.DEFAULT_CHUNK_ELEMENTS,
                   svm: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
  """Seeds fig 3-4, Table 3.1 and fig 3-5 from GT-box feature stores.

  Args:
    train_stores: net name -> its store of VOC07 trainval GT boxes.
    test_stores: net name -> its store of VOC07 test GT boxes (same nets).
    out_dir: where tables, figures and cache/ go.
    layer: the layer (pool5 in the seeds), spatial max per filter.
    sizes: the numbers of filters k (clipped to the layer's filters).
    top_overlap: the filter-set size of the overlap matrix (50).
    include_difficult: keep GT boxes flagged difficult.
    chunk_elements: activation values per streamed chunk.
    svm: solver options (C, pos_weight, bias_scale, tol, max_iter, seed).

  Returns:
    The summary: 'table_3_1' {'<net>@50': {class: k}, ...}, 'full_map'
    {net: mAP with every filter}, 'files'.
  """
  svm = dict(svm or {})
  results = {}
  for net, test_store in test_stores.items():
    train_store = train_stores[net]

    results[net] = stepcache.cached_arrays(
        os.path.join(out_dir, 'cache', f'{net}_{layer}.npz'),
        functools.partial(_greedy_subsets, train_store, test_store, layer,
                          sizes, top_overlap, include_difficult,
                          chunk_elements, svm),
        train=stepcache.store_signature(train_store),
        test=stepcache.store_signature(test_store),
        sizes=list(sizes), top_overlap=top_overlap, svm=svm,
        include_difficult=include_difficult)

  table_3_1 = {f'{net}@{round(100 * fraction)}':
               _per_class(r[f'reach_{round(100 * fraction)}'])
               for fraction in subsets.REACH_FRACTIONS
               for net, r in results.items()}
  files = list(tables.write_table(
      os.path.join(out_dir, 'table_3_1'), table_3_1, list(VOC_CLASSES),
      row_header='net@% of full AP', title=f'{layer} filters needed to reach '
      '50% / 90% of the full GT-box classification AP (seeds Table 3.1)'))
  ap_rows = {}
  for net, r in results.items():
    for k, name in enumerate(VOC_CLASSES):
      ap_rows[f'{net}/{name}'] = dict(zip(map(str, r['sizes']),
                                          (100 * r['ap'][k]).tolist()))
    ap_rows[f'{net}/mAP'] = dict(zip(map(str, r['sizes']),
                                     (100 * r['ap'].mean(0)).tolist()))
  all_sizes = sorted({int(k) for r in results.values() for k in r['sizes']})
  files += tables.write_table(
      os.path.join(out_dir, 'subset_ap'), ap_rows, [str(k) for k in all_sizes],
      row_header='net/class', title=f'VOC07 test GT-box AP (%) with each '
      f'class\'s top-k {layer} filters (seeds fig 3-4)')
  files.append(figures.subset_ap_curves(
      os.path.join(out_dir, 'fig3-4_subset_ap.png'),
      {net: (r['sizes'], r['ap']) for net, r in results.items()}, VOC_CLASSES,
      title=f'GT-box AP vs number of {layer} filters (seeds fig 3-4)'))
  for net, r in results.items():
    files.append(figures.overlap_heatmap(
        os.path.join(out_dir, f'fig3-5_overlap_{net}.png'), r['overlap'],
        tables.SHORT_CLASS_NAMES,
        title=f'{net}: fraction of class i\'s top-{top_overlap} {layer} '
        'filters shared with class j (seeds fig 3-5)'))
  return {'table_3_1': table_3_1,
          'full_map': {net: float(r['full_ap'].mean())
                       for net, r in results.items()},
          'files': [os.path.basename(f) for f in files]}


# --------------------------------------------- training dynamics (ch. 4) ---

def snapshot_steps(pretrain_workdir: str) -> list[int]:
  """The steps of every finished checkpoint of a training workdir."""
  manager_dir = checkpoints.checkpoint_dir(pretrain_workdir)
  if not os.path.isdir(manager_dir):
    raise FileNotFoundError(f'no checkpoints at {manager_dir}')
  return sorted(ocp.utils.checkpoint_steps(manager_dir))


def resolve_snapshots(pretrain_workdir: str,
                      steps: Sequence[int] = ()) -> list[int]:
  """`steps` checked against the run's checkpoints; empty = all of them.

  Raises:
    FileNotFoundError: a step without a checkpoint (lists the available).
  """
  available = snapshot_steps(pretrain_workdir)
  steps = sorted(int(s) for s in steps) or available
  missing = sorted(set(steps) - set(available))
  if missing:
    raise FileNotFoundError(f'no checkpoints for steps {missing} in '
                            f'{pretrain_workdir}; it has {available}')
  return steps


def dynamics_report(pretrain_workdir: str, out_dir: str, *,
                    steps: Sequence[int] = ()) -> dict[str, Any]:
  """Seeds fig 4-1 from a pretraining workdir (snapshots + metrics.jsonl).

  Args:
    pretrain_workdir: the pretraining run (configs/imagenet_caffenet.py).
    out_dir: where the table, figure and cache/ go.
    steps: snapshots to draw; empty = every checkpoint of the run.

  Returns:
    The summary: 'steps', 'validation' {step: {val_top1, ...}},
    'final_loss', 'files'.

  Raises:
    FileNotFoundError: the workdir is not a training run (e.g. imported
      Caffe weights: no snapshots, no metrics), naming what is missing.
  """
  from cnnjax import train  # pylint: disable=g-import-not-at-top
  metrics_path = os.path.join(pretrain_workdir, train.METRICS_FILE)
  if not os.path.exists(metrics_path):
    raise FileNotFoundError(
        f'the dynamics analysis needs a pretraining workdir (snapshots and '
        f'{train.METRICS_FILE}); {metrics_path} does not exist. Pass '
        'nets.pretrained=<a workdir of configs/imagenet_caffenet.py>')
  steps = resolve_snapshots(pretrain_workdir, steps)

  grids = stepcache.cached_arrays(
      os.path.join(out_dir, 'cache', 'conv1_grids.npz'),
      lambda: {f'step_{s}': dynamics.filter_grid(
          checkpoints.load_params(pretrain_workdir, s)['conv1']['kernel'])
               for s in steps},
      workdir=os.path.abspath(pretrain_workdir), steps=steps)
  curves = dynamics.training_curves(dynamics.read_metrics(metrics_path))
  value_keys = [k for k in ('val_top1', 'val_top5', 'val_loss') if k in curves]
  validation = {str(step): {k: float(curves[k][i]) for k in value_keys}
                for i, step in enumerate(curves['eval_step'])}
  files = list(tables.write_table(
      os.path.join(out_dir, 'validation'), validation, value_keys, digits=4,
      row_header='step', title='Pretraining validation (seeds fig 4-1)'))
  files.append(figures.training_dynamics(
      os.path.join(out_dir, 'fig4-1_dynamics.png'),
      [(s, grids[f'step_{s}']) for s in steps], curves,
      title='conv1 filters per snapshot; training loss and top-1 '
      '(seeds fig 4-1)'))
  return {'steps': steps, 'validation': validation,
          'final_loss': float(curves['loss'][-1]) if len(curves['loss'])
          else None,
          'lr_drops': curves['lr_drops'].tolist(),
          'files': [os.path.basename(f) for f in files]}


# ------------------------------------------------- similarity (beyond) ---

def layer_cka(a: store_lib.FeatureStore, b: store_lib.FeatureStore,
              layers: Sequence[str], rows: np.ndarray,
              batch_size: int) -> np.ndarray:
  """[L] minibatch linear CKA of each layer between two aligned stores."""
  check_aligned(a, b)
  return np.array([minibatch_cka(a.layer(l), b.layer(l), rows, batch_size)
                   for l in layers])


def _snapshot_cka(stores: Sequence[store_lib.FeatureStore],
                  layers: Sequence[str], batch_size: int) -> dict[str, Any]:
  """CKA per layer of consecutive snapshots [L, S-1] and to the last [L, S]."""
  rows = np.arange(stores[0].num_rows)
  progress = _Progress('CKA snapshots', 2 * len(stores) - 2)
  consecutive = []
  for a, b in zip(stores[:-1], stores[1:]):
    consecutive.append(layer_cka(a, b, layers, rows, batch_size))
    progress.step('consecutive')
  to_final = []
  for a in stores[:-2]:
    to_final.append(layer_cka(a, stores[-1], layers, rows, batch_size))
    progress.step('to final')
  # The last with itself: 1, or NaN for a constant (e.g. dead) layer.
  to_final += [consecutive[-1],
               layer_cka(stores[-1], stores[-1], layers, rows, batch_size)]
  progress.step('final')
  return {'consecutive': np.stack(consecutive, axis=1),
          'to_final': np.stack(to_final, axis=1)}


def similarity_report(net_stores: Stores, snapshot_stores: Mapping[int,
                      store_lib.FeatureStore], out_dir: str, *,
                      layers: Sequence[str], batch_size: int = 1024,
                      include_difficult: bool = True) -> dict[str, Any]:
  """Linear CKA, layer by layer: finetuned vs pretrained, snapshot vs snapshot.

  Args:
    net_stores: net name -> store of the same examples (VOC07 test GT
      boxes); every net is compared with REFERENCE_NET.
    snapshot_stores: pretraining step -> store of the same examples (VOC07
      test images); consecutive steps are compared, and each with the last.
      Fewer than two skip the snapshot comparison.
    out_dir: where tables, figures and cache/ go.
    layers: layers compared.
    batch_size: rows per minibatch of the streamed CKA (`minibatch_cka`).
    include_difficult: keep GT boxes flagged difficult (net comparison).

  Returns:
    The summary: 'nets' {net: {layer: CKA}}, 'consecutive'
    {'<a>-><b>': {layer: CKA}}, 'to_final' {step: {layer: CKA}}, 'files'.
  """
  files, summary = [], {}
  others = [net for net in net_stores if net != REFERENCE_NET]
  if REFERENCE_NET in net_stores and others:
    reference = net_stores[REFERENCE_NET]
    rows = np.flatnonzero(example_mask(reference, include_difficult))
    values = {}
    progress = _Progress('CKA nets', len(others))
    for net in others:
      values[net] = stepcache.cached_arrays(
          os.path.join(out_dir, 'cache', f'{REFERENCE_NET}_vs_{net}.npz'),
          lambda net=net: {'cka': layer_cka(reference, net_stores[net],
                                            layers, rows, batch_size)},
          a=stepcache.store_signature(reference),
          b=stepcache.store_signature(net_stores[net]),
          layers=list(layers), batch_size=batch_size,
          include_difficult=include_difficult)['cka']
      progress.step(net)
    summary['nets'] = {net: dict(zip(layers, v.tolist()))
                       for net, v in values.items()}
    files += tables.write_table(
        os.path.join(out_dir, 'cka_nets'),
        {l: {net: float(v[i]) for net, v in values.items()}
         for i, l in enumerate(layers)}, others, digits=3,
        row_header='layer', title=f'Linear CKA with {REFERENCE_NET}, '
        'VOC07 test GT boxes')
    files.append(figures.cka_by_layer(
        os.path.join(out_dir, 'cka_nets.png'), values, layers,
        title=f'How much finetuning changed each layer: CKA with '
        f'{REFERENCE_NET}'))

  steps = sorted(snapshot_stores)
  if len(steps) > 1:
    stores = [snapshot_stores[s] for s in steps]
    found = stepcache.cached_arrays(
        os.path.join(out_dir, 'cache', 'snapshots.npz'),
        functools.partial(_snapshot_cka, stores, layers, batch_size),
        stores=[stepcache.store_signature(s) for s in stores],
        layers=list(layers), batch_size=batch_size)
    pair_names = [f'{a}->{b}' for a, b in zip(steps[:-1], steps[1:])]
    step_names = [str(s) for s in steps]
    for key, names in (('consecutive', pair_names), ('to_final', step_names)):
      summary[key] = {name: dict(zip(layers, found[key][:, j].tolist()))
                      for j, name in enumerate(names)}
      files += tables.write_table(
          os.path.join(out_dir, f'cka_snapshots_{key}'),
          {l: dict(zip(names, found[key][i].tolist()))
           for i, l in enumerate(layers)}, names, digits=3,
          row_header='layer', title='Linear CKA between pretraining '
          f'snapshots ({key.replace("_", " ")}), VOC07 test images')
    files.append(figures.cka_heatmaps(
        os.path.join(out_dir, 'cka_snapshots.png'),
        {'consecutive snapshots': (found['consecutive'], layers, pair_names),
         f'each snapshot vs step {steps[-1]}': (found['to_final'], layers,
                                                step_names)},
        title='Linear CKA per layer across pretraining'))
  summary['files'] = [os.path.basename(f) for f in files]
  return summary


# ------------------------------------------------------------------ task ---

class _Inputs:
  """The task's nets, images and feature stores, resolved once, on demand."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    self.config = config
    self.workdir = workdir
    self._images, self._nets = {}, {}

  def images(self, split: str):
    if split not in self._images:
      self._images[split] = datasets.voc_split(self.config.data, split)
      logging.info('analyze: %d %s images', len(self._images[split]), split)
    return self._images[split]

  def net(self, name: str) -> nets_lib.Net:
    if name not in self._nets:
      self._nets[name] = nets_lib.resolve(self.config, name, self.workdir)
    return self._nets[name]

  def store(self, net: nets_lib.Net, split: str,
            kind: str) -> store_lib.FeatureStore:
    extract = self.config.extract
    return feature_cache.features(
        net, self.images(split), split, kind, extract.layers, self.workdir,
        batch_size=extract.batch_size, encoding=extract.encoding)

  def gt_stores(self, names: Sequence[str], split: str) -> dict:
    return {name: self.store(self.net(name), split, 'gt') for name in names}

  def pretrain_workdir(self) -> str:
    """The pretraining run (trained first in the demo), nets.pretrained."""
    return self.net(REFERENCE_NET).checkpoint

  def snapshot_nets(self) -> dict[int, nets_lib.Net]:
    """The pretraining snapshots (config.snapshots, or all) as nets."""
    base = self.net(REFERENCE_NET)
    steps = resolve_snapshots(base.checkpoint, self.config.snapshots)
    return {s: dataclasses.replace(base, step=s, name=REFERENCE_NET)
            for s in steps}


def _options(block: ml_collections.ConfigDict) -> dict[str, Any]:
  """A config block as keyword arguments of its report (minus 'nets')."""
  return {k: v for k, v in block.to_dict().items() if k != 'nets'}


def _entropy(inputs: _Inputs, out_dir: str) -> dict:
  config = inputs.config
  return entropy_report(inputs.gt_stores(config.entropy.nets, 'test'),
                        out_dir, include_difficult=config.include_difficult,
                        **_options(config.entropy))


def _selectivity(inputs: _Inputs, out_dir: str) -> dict:
  config = inputs.config
  return selectivity_report(
      inputs.gt_stores(config.selectivity.nets, 'test'), out_dir,
      include_difficult=config.include_difficult,
      **_options(config.selectivity))


def _subsets(inputs: _Inputs, out_dir: str) -> dict:
  config = inputs.config
  names = config.subsets.nets
  return subsets_report(
      inputs.gt_stores(names, 'trainval'), inputs.gt_stores(names, 'test'),
      out_dir, include_difficult=config.include_difficult,
      svm=config.svm.to_dict(), **_options(config.subsets))


def _dynamics(inputs: _Inputs, out_dir: str) -> dict:
  return dynamics_report(inputs.pretrain_workdir(), out_dir,
                         steps=inputs.config.snapshots)


def _similarity(inputs: _Inputs, out_dir: str) -> dict:
  config = inputs.config
  options = _options(config.similarity)
  with_snapshots = options.pop('snapshots')
  snapshot_stores = ({step: inputs.store(net, 'test', 'whole')
                      for step, net in inputs.snapshot_nets().items()}
                     if with_snapshots else {})
  return similarity_report(
      inputs.gt_stores(config.similarity.nets, 'test'), snapshot_stores,
      out_dir, include_difficult=config.include_difficult, **options)


DRIVERS = {'entropy': _entropy, 'selectivity': _selectivity,
           'subsets': _subsets, 'dynamics': _dynamics,
           'similarity': _similarity}


def _check_config(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The analyses to run; raises ValueError naming a bad key."""
  if config.which != 'all' and config.which not in ANALYSES:
    raise ValueError(f'config.which={config.which!r}; valid: '
                     f'{", ".join(ANALYSES)}, all')
  which = ANALYSES if config.which == 'all' else (config.which,)
  extracted = set(config.extract.layers)
  needed = {'entropy.layers': config.entropy.layers,
            'selectivity.layer': (config.selectivity.layer,),
            'subsets.layer': (config.subsets.layer,),
            'similarity.layers': config.similarity.layers}
  for key, layers in needed.items():
    if key.split('.')[0] in which and not set(layers) <= extracted:
      raise ValueError(f'config.{key}={tuple(layers)} needs layers missing '
                       f'from config.extract.layers={tuple(extracted)}')
  return which


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs (or redraws from its caches) the analyses `config.which` names.

  Returns:
    analysis name -> its summary (also written to
    <workdir>/analyses/<name>/summary.json; which=all adds
    <workdir>/analyses/all/summary.json).
  """
  which = _check_config(config)
  if set(which) - {'dynamics'}:
    datasets.check_voc(config.data)
  nets_lib.check_pretrained(config)
  inputs = _Inputs(config, workdir)
  summaries = {}
  for name in which:
    start = time.time()
    out_dir = os.path.join(workdir, 'analyses', name)
    logging.info('analyze %s -> %s', name, out_dir)
    summary = DRIVERS[name](inputs, out_dir)
    summary['seconds'] = round(time.time() - start, 1)
    config_lib.write_json_atomic(os.path.join(out_dir, 'summary.json'),
                                 summary)
    summaries[name] = summary
    print(f'analyze {name}: {len(summary["files"])} files in {out_dir} '
          f'({summary["seconds"]:.0f}s)')
  if config.which == 'all':
    config_lib.write_json_atomic(
        os.path.join(workdir, 'analyses', 'all', 'summary.json'), summaries)
  return summaries
