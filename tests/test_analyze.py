"""The analysis drivers on tiny synthetic feature stores, against references.

Each report is checked against the SPEC 6 definitions written as numpy loops
(entropy, precision, per-filter AP, unbiased CKA) or against the pure
analysis function fed with features read independently of the store
streaming (greedy subsets), and for the table layouts the paper's numbers
use.
"""

import csv
import json
import os

import numpy as np
import pytest

from cnnjax import analyze
from cnnjax import checkpoints
from cnnjax import config_lib
from cnnjax import metrics
from cnnjax.analysis import dynamics
from cnnjax.analysis import entropy
from cnnjax.analysis import subsets
from cnnjax.data.voc import VOC_CLASSES
from cnnjax.features import store as store_lib
from cnnjax.reporting import paper
from cnnjax.reporting import tables

SHAPES = {'pool5': (2, 2, 6), 'fc7': (8,)}
LAYERS = tuple(SHAPES)
NUM_ROWS = 60
THRESHOLDS = 100
CONFIGS = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), 'configs')


def _labels():
  return np.arange(NUM_ROWS) % 20


def _difficult():
  return np.arange(NUM_ROWS) % 7 == 3


def _features(seed: int, signal: float) -> dict[str, np.ndarray]:
  """Non-negative activations; filter f fires more on classes = f mod F."""
  rng = np.random.default_rng(seed)
  labels = _labels()
  out = {}
  for layer, shape in SHAPES.items():
    filters = shape[-1]
    bump = signal * (labels[:, None] % filters == np.arange(filters))  # [N, F]
    noise = rng.gamma(1.0, size=(NUM_ROWS,) + shape)
    bump = bump.reshape((NUM_ROWS,) + (1,) * (len(shape) - 1) + (filters,))
    out[layer] = np.maximum(noise + bump - 0.5, 0.0).astype(np.float32)
  return out


def _write_store(directory, features) -> store_lib.FeatureStore:
  rows = np.arange(NUM_ROWS)
  writer = store_lib.FeatureStoreWriter(
      str(directory), {l: (SHAPES[l], 'float32') for l in LAYERS},
      {'test': str(directory)}, num_rows=NUM_ROWS, shard_rows=25)
  for k in range(writer.num_shards):
    lo, hi = writer.shard_range(k)
    writer.write_shard(
        k, {l: features[l][lo:hi] for l in LAYERS},
        {'image_index': rows[lo:hi] // 2,
         'image_id': [f'{i // 2:06d}' for i in rows[lo:hi]],
         'box': np.stack([rows[lo:hi] + 1] * 2 + [rows[lo:hi] + 20] * 2, 1),
         'label': _labels()[lo:hi].astype(np.int32),
         'difficult': _difficult()[lo:hi]})
  return writer.finalize()


@pytest.fixture(scope='module')
def data(tmp_path_factory):
  """Features and stores: split -> net -> ..., plus three snapshots."""
  root = tmp_path_factory.mktemp('stores')
  features, stores = {}, {}
  for split, offset in (('test', 0), ('trainval', 10)):
    for net, (seed, signal) in {'pretrained': (1, 1.0),
                                'ft': (2, 2.0)}.items():
      features.setdefault(split, {})[net] = _features(seed + offset, signal)
      stores.setdefault(split, {})[net] = _write_store(
          root / f'{net}_{split}', features[split][net])
  for step, signal in ((10, 0.2), (20, 1.0), (30, 1.5)):
    features.setdefault('snapshots', {})[step] = _features(step, signal)
    stores.setdefault('snapshots', {})[step] = _write_store(
        root / f'snapshot_{step}', features['snapshots'][step])
  return features, stores


def _read_csv(path) -> dict[str, dict[str, str]]:
  with open(path, newline='') as f:
    reader = csv.reader(f)
    header = next(reader)
    return {row[0]: dict(zip(header[1:], row[1:])) for row in reader}


def _header(path) -> list[str]:
  with open(path, newline='') as f:
    return next(csv.reader(f))[1:]


def _assert_png(path):
  import matplotlib.image  # pylint: disable=g-import-not-at-top
  image = matplotlib.image.imread(path)
  assert image.ndim == 3 and min(image.shape[:2]) > 100, path


# --------------------------------------------------- numpy references ---

def _samples(acts, method):
  """[N, S, F] samples of a method (SPEC 6)."""
  maps = acts.reshape(acts.shape[0], -1, acts.shape[-1]).astype(np.float64)
  return maps.max(axis=1, keepdims=True) if method == 'spmax' else maps


def _reference_aue(acts, labels, method):
  """AuE [F] by loops over filters and thresholds."""
  scores = _samples(acts, method)                            # [N, S, F]
  sample_labels = np.repeat(labels, scores.shape[1])
  result = []
  for f in range(scores.shape[2]):
    s = scores[:, :, f].reshape(-1)
    curve = []
    for t in np.linspace(s.min(), s.max(), THRESHOLDS):
      above = s >= t
      weights = s[above] if method == 'weighted' else np.ones(above.sum())
      hist = np.bincount(sample_labels[above], weights, minlength=20)
      p = hist[hist > 0] / hist.sum() if hist.sum() > 0 else np.zeros(0)
      curve.append(-(p * np.log2(p)).sum())
    result.append(np.mean(curve))
  return np.array(result)


def _reference_mcaue_at(aue, fractions):
  ordered = np.sort(aue)
  cumulative = np.cumsum(ordered) / np.arange(1, len(aue) + 1)
  return np.array([cumulative[int(np.ceil(round(f * len(aue), 9))) - 1]
                   for f in fractions])


def _reference_hsic(k, l):
  """Song et al.'s unbiased HSIC from Gram matrices."""
  n = k.shape[0]
  k, l = k.copy(), l.copy()
  np.fill_diagonal(k, 0.0)
  np.fill_diagonal(l, 0.0)
  one = np.ones(n)
  return (np.trace(k @ l) + (one @ k @ one) * (one @ l @ one) /
          ((n - 1) * (n - 2)) - 2.0 / (n - 2) * (one @ k @ l @ one)) / (
              n * (n - 3))


def _reference_cka(x, y):
  x = x.reshape(len(x), -1).astype(np.float64)
  y = y.reshape(len(y), -1).astype(np.float64)
  k, l = x @ x.T, y @ y.T
  return _reference_hsic(k, l) / np.sqrt(_reference_hsic(k, k) *
                                         _reference_hsic(l, l))


# ----------------------------------------------------------------- tests ---

@pytest.mark.parametrize('include_difficult,methods', [
    (True, entropy.METHODS), (False, ('weighted',))])
def test_entropy_report_matches_loop_reference(data, tmp_path,
                                               include_difficult, methods):
  features, stores = data
  summary = analyze.entropy_report(
      stores['test'], str(tmp_path), layers=LAYERS, methods=methods,
      num_thresholds=THRESHOLDS, include_difficult=include_difficult)
  keep = np.ones(NUM_ROWS, bool) if include_difficult else ~_difficult()
  labels = _labels()[keep]
  table = _read_csv(tmp_path / 'table_2_1_ft.csv')
  paper_columns = {c for (_, c) in paper.paper_table('2.1')
                   if c.split('@')[0] in methods}
  assert set(_header(tmp_path / 'table_2_1_ft.csv')) == paper_columns
  assert list(table) == list(LAYERS)
  fractions = entropy.TABLE_FRACTIONS
  for layer in LAYERS:
    for method in methods:
      pre, ft = (_reference_mcaue_at(_reference_aue(
          features['test'][net][layer][keep], labels, method), fractions)
                 for net in ('pretrained', 'ft'))
      want = 100 * (pre - ft) / pre
      got = [float(table[layer][f'{method}@{f}']) for f in fractions]
      np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4,
                                 err_msg=f'{layer} {method}')
      mcaue = _read_csv(tmp_path / 'mcaue.csv')[f'ft/{layer}']
      np.testing.assert_allclose(
          [float(mcaue[f'{method}@{f}']) for f in fractions], ft, rtol=1e-5)
  assert summary['examples'] == {'pretrained': int(keep.sum()),
                                 'ft': int(keep.sum())}
  for name in [f'fig2-1_aue_{m}.png' for m in methods] + ['fig2-2_mcaue.png']:
    assert name in summary['files']
    _assert_png(tmp_path / name)


def test_entropy_report_reuses_its_cache_until_settings_change(
    data, tmp_path, monkeypatch):
  _, stores = data
  one = {'pretrained': stores['test']['pretrained']}
  first = analyze.entropy_report(one, str(tmp_path), layers=('fc7',),
                                 methods=('label',))

  def fail(*args, **kwargs):
    raise AssertionError('recomputed although cached')

  monkeypatch.setattr(entropy, 'threshold_statistics', fail)
  again = analyze.entropy_report(one, str(tmp_path), layers=('fc7',),
                                 methods=('label',))
  assert again['mcaue'] == first['mcaue']
  with pytest.raises(AssertionError, match='recomputed'):
    analyze.entropy_report(one, str(tmp_path), layers=('fc7',),
                           methods=('label',), num_thresholds=50)


def test_selectivity_report_best_filters_match_loops(data, tmp_path):
  features, stores = data
  summary = analyze.selectivity_report(stores['test'], str(tmp_path),
                                       num_thresholds=THRESHOLDS)
  table = _read_csv(tmp_path / 'best_filters.csv')
  assert list(table) == [*VOC_CLASSES, 'mean']
  labels = _labels()
  for net in ('pretrained', 'ft'):
    scores = features['test'][net]['pool5'].max(axis=(1, 2)).astype(
        np.float64)                                          # [N, F]
    for c, name in enumerate(VOC_CLASSES):
      targets = np.where(labels == c, 1, -1)
      ap = max(metrics.cls_average_precision(scores[:, f], targets)
               for f in range(scores.shape[1]))
      area = max(np.mean([np.mean(labels[scores[:, f] >= t] == c)
                          for t in np.linspace(scores[:, f].min(),
                                               scores[:, f].max(),
                                               THRESHOLDS)])
                 for f in range(scores.shape[1]))
      assert float(table[name][f'{net}/AP']) == pytest.approx(100 * ap,
                                                              abs=1e-3)
      assert float(table[name][f'{net}/selectivity']) == pytest.approx(
          100 * area, abs=1e-3)
  listing = _read_csv(tmp_path / 'top_filters_ft.csv')
  assert len(listing['person']['selective filters'].split()) == 5
  for name in ('fig3-1_precision.png', 'fig3-2_pr.png'):
    assert name in summary['files']
    _assert_png(tmp_path / name)


def test_subsets_report_matches_greedy_subsets_on_numpy_features(data,
                                                                 tmp_path):
  features, stores = data
  svm = {'C': 1e-3, 'pos_weight': 2.0, 'bias_scale': 10.0, 'tol': 0.1}
  summary = analyze.subsets_report(stores['trainval'], stores['test'],
                                   str(tmp_path), include_difficult=False,
                                   svm=svm)
  keep = ~_difficult()
  table = _read_csv(tmp_path / 'table_3_1.csv')
  assert list(table) == ['pretrained@50', 'ft@50', 'pretrained@90', 'ft@90']
  assert {r for (r, _) in paper.paper_table('3.1')} == set(table)
  assert _header(tmp_path / 'table_3_1.csv') == list(VOC_CLASSES)
  ap_table = _read_csv(tmp_path / 'subset_ap.csv')
  for net in ('pretrained', 'ft'):
    train = features['trainval'][net]['pool5'].max(axis=(1, 2))[keep]
    test = features['test'][net]['pool5'].max(axis=(1, 2))[keep]
    want = subsets.greedy_filter_subsets(train, _labels()[keep], test,
                                         _labels()[keep], 20, **svm)
    np.testing.assert_array_equal(want['sizes'], [1, 2, 3, 5, 6])
    for pct in (50, 90):
      assert [int(table[f'{net}@{pct}'][c]) for c in VOC_CLASSES] == (
          want[f'reach_{pct}'].tolist())
    np.testing.assert_allclose(
        [float(ap_table[f'{net}/{c}'][str(k)]) for c in VOC_CLASSES
         for k in want['sizes']], 100 * want['ap'].reshape(-1), atol=1e-4)
    assert summary['full_map'][net] == pytest.approx(want['full_ap'].mean())
  for name in ('fig3-4_subset_ap.png', 'fig3-5_overlap_ft.png',
               'fig3-5_overlap_pretrained.png'):
    assert name in summary['files']
    _assert_png(tmp_path / name)


@pytest.fixture(scope='module')
def pretrain_run(tmp_path_factory):
  """A fake pretraining workdir: conv1 snapshots at 10 and 20, a metrics log."""
  workdir = tmp_path_factory.mktemp('pretrain')
  kernels = {}
  for step in (10, 20):
    kernels[step] = np.random.default_rng(step).normal(
        size=(11, 11, 3, 6)).astype(np.float32)
    checkpoints.save_params(str(workdir), {'conv1': {'kernel': kernels[step]}},
                            step=step)
  records = [{'step': s, 'loss': 4.0 - s / 10, 'top1': s / 100,
              'lr': 0.01 if s < 15 else 0.001} for s in (5, 10, 15, 20)]
  records += [{'step': 10, 'val_top1': 0.1, 'val_top5': 0.3},
              {'step': 20, 'val_top1': 0.2, 'val_top5': 0.5}]
  with open(workdir / 'metrics.jsonl', 'w') as f:
    f.write('\n'.join(json.dumps(r) for r in records) + '\n')
  return str(workdir), kernels


def test_dynamics_report(pretrain_run, tmp_path):
  workdir, kernels = pretrain_run
  summary = analyze.dynamics_report(workdir, str(tmp_path))
  assert summary['steps'] == [10, 20] and summary['lr_drops'] == [15]
  assert summary['final_loss'] == pytest.approx(2.0)
  table = _read_csv(tmp_path / 'validation.csv')
  assert table == {'10': {'val_top1': '0.1', 'val_top5': '0.3'},
                   '20': {'val_top1': '0.2', 'val_top5': '0.5'}}
  with np.load(tmp_path / 'cache' / 'conv1_grids.npz') as grids:
    for step, kernel in kernels.items():
      np.testing.assert_array_equal(grids[f'step_{step}'],
                                    dynamics.filter_grid(kernel))
  _assert_png(tmp_path / 'fig4-1_dynamics.png')
  with pytest.raises(FileNotFoundError, match=r'steps \[15\].*\[10, 20\]'):
    analyze.dynamics_report(workdir, str(tmp_path), steps=(10, 15))


def test_dynamics_report_needs_a_training_run(tmp_path):
  checkpoints.save_params(str(tmp_path / 'imported'), {'conv1': {}})
  with pytest.raises(FileNotFoundError, match='metrics.jsonl'):
    analyze.dynamics_report(str(tmp_path / 'imported'), str(tmp_path / 'out'))


def test_similarity_report_matches_unbiased_cka(data, tmp_path):
  features, stores = data
  summary = analyze.similarity_report(
      stores['test'], stores['snapshots'], str(tmp_path), layers=LAYERS)
  table = _read_csv(tmp_path / 'cka_nets.csv')
  consecutive = _read_csv(tmp_path / 'cka_snapshots_consecutive.csv')
  to_final = _read_csv(tmp_path / 'cka_snapshots_to_final.csv')
  snaps = features['snapshots']
  for layer in LAYERS:
    want = _reference_cka(features['test']['pretrained'][layer],
                          features['test']['ft'][layer])
    assert float(table[layer]['ft']) == pytest.approx(want, abs=1e-4)
    assert float(consecutive[layer]['10->20']) == pytest.approx(
        _reference_cka(snaps[10][layer], snaps[20][layer]), abs=1e-4)
    assert float(to_final[layer]['10']) == pytest.approx(
        _reference_cka(snaps[10][layer], snaps[30][layer]), abs=1e-4)
    assert to_final[layer]['20'] == consecutive[layer]['20->30']
    assert float(to_final[layer]['30']) == pytest.approx(1.0, abs=1e-5)
  for name in ('cka_nets.png', 'cka_snapshots.png'):
    assert name in summary['files']
    _assert_png(tmp_path / name)


def test_minibatch_cka_streams_batches_of_at_least_batch_size(data):
  _, stores = data
  a, b = stores['test']['pretrained'], stores['test']['ft']
  rows = np.arange(NUM_ROWS)
  whole = analyze.minibatch_cka(a.layer('fc7'), b.layer('fc7'), rows, 1024)
  batched = analyze.minibatch_cka(a.layer('fc7'), b.layer('fc7'), rows, 25)
  # Two batches of 30: the sum of per-batch unbiased HSICs.
  x = a.layer('fc7').read().astype(np.float64)
  y = b.layer('fc7').read().astype(np.float64)
  halves = [(x[:30], y[:30]), (x[30:], y[30:])]
  sums = [sum(_reference_hsic(p @ p.T, q @ q.T) for p, q in pairs)
          for pairs in (halves, [(p, p) for p, _ in halves],
                        [(q, q) for _, q in halves])]
  assert batched == pytest.approx(sums[0] / np.sqrt(sums[1] * sums[2]),
                                  abs=1e-5)
  assert whole == pytest.approx(_reference_cka(x, y), abs=1e-5)
  with pytest.raises(ValueError, match='at least 4 rows'):
    analyze.minibatch_cka(a.layer('fc7'), b.layer('fc7'), rows[:3], 8)


def test_check_aligned_names_the_differing_field(data, tmp_path):
  _, stores = data
  shifted = _features(0, 1.0)
  rows = np.arange(NUM_ROWS)
  writer = store_lib.FeatureStoreWriter(
      str(tmp_path), {'fc7': (SHAPES['fc7'], 'float32')},
      num_rows=NUM_ROWS, shard_rows=NUM_ROWS)
  writer.write_shard(0, {'fc7': shifted['fc7']},
                     {'image_id': [f'{i:06d}' for i in rows]})
  with pytest.raises(ValueError, match="'image_id' differs"):
    analyze.check_aligned(stores['test']['pretrained'], writer.finalize())


def _touch_figure(fig, path, dpi=None):
  """save_figure without rendering: the wiring test needs only the file."""
  del dpi
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  plt.close(fig)
  open(path, 'wb').close()
  return path


def _demo_config(which):
  config = config_lib.load_sibling_config(
      os.path.join(CONFIGS, 'analyses.py'), 'analyses.py',
      f'which={which},runlocal')
  config.extract.layers = LAYERS
  config.entropy.layers = LAYERS
  config.similarity.layers = LAYERS
  config.entropy.methods = ('spmax',)
  return config


def test_run_writes_every_analysis_and_the_overall_summary(
    data, pretrain_run, tmp_path, monkeypatch):
  _, stores = data
  workdir, _ = pretrain_run
  monkeypatch.setattr(analyze._Inputs, 'gt_stores',
                      lambda self, names, split: {n: stores[split][n]
                                                  for n in names})
  monkeypatch.setattr(analyze._Inputs, 'pretrain_workdir',
                      lambda self: workdir)
  monkeypatch.setattr(analyze._Inputs, 'snapshot_nets',
                      lambda self: {10: 10, 20: 20})
  monkeypatch.setattr(analyze._Inputs, 'store',
                      lambda self, net, split, kind: stores['snapshots'][net])
  monkeypatch.setattr(tables, 'save_figure', _touch_figure)  # drawn above
  config = _demo_config('all')
  config.entropy.nets = config.similarity.nets = ('pretrained', 'ft')
  summaries = analyze.run(config, str(tmp_path))
  assert list(summaries) == list(analyze.ANALYSES)
  for name in analyze.ANALYSES:
    out_dir = tmp_path / 'analyses' / name
    assert (out_dir / 'summary.json').exists()
    for file in summaries[name]['files']:
      assert (out_dir / file).exists(), (name, file)
  assert 'consecutive' in summaries['similarity']
  assert (tmp_path / 'analyses' / 'all' / 'summary.json').exists()


def test_config_errors_name_the_key():
  with pytest.raises(ValueError, match=r'config.which=.bogus'):
    analyze.run(_demo_config('bogus'), '/nonexistent')
  config = _demo_config('entropy')
  config.entropy.layers = ('pool5', 'conv3')
  with pytest.raises(ValueError, match=r'config.entropy.layers'):
    analyze.run(config, '/nonexistent')


def test_percent_decrease_is_undefined_for_a_zero_reference():
  assert analyze._percent_decrease(2.0, 1.5) == pytest.approx(25.0)
  assert analyze._percent_decrease(0.0, 0.3) is None      # dead filters
