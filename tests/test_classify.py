"""The classify task: ablation, scaling, SVMs and AP; tables; caching.

The core is checked against an independent reference (numpy ablations,
sklearn's LinearSVC looped over the classes, an 11-point AP written out
here); `run` is driven over tiny synthetic feature stores with the net and
data lookups stubbed, so no network is trained or run.
"""

import csv
import json
import os

import jax
import ml_collections
import numpy as np
import pytest
from sklearn import svm as sk_svm

from cnnjax import checkpoints
from cnnjax import classify
from cnnjax import config_lib
from cnnjax import metrics
from cnnjax import nets as nets_lib
from cnnjax.data import datasets
from cnnjax.data import preprocess
from cnnjax.data import synthetic
from cnnjax.data import voc
from cnnjax.features import store as store_lib
from cnnjax.models import caffenet

# Compiles are shared: every SVM fit has N <= 256 and (D, K) in
# {(36, 3), (4, 3)} or {(180, 20), (20, 20)}; ablation chunks have 45 rows.
_MAP, _FILTERS, _CLASSES = 3, 4, 3
_TIGHT = classify.SvmSettings(tol=1e-3)


def _activations(rng, classes):
  """pool-like [N, 3, 3, 4] ReLU maps: class c lights filter c at (c, c)."""
  acts = np.maximum(0.0, rng.normal(size=(len(classes), _MAP, _MAP, _FILTERS)))
  for n, c in enumerate(classes):
    acts[n, c, c, c] += 3.0
  return acts.astype(np.float32)


def _write_store(directory, layers, rows):
  num = len(next(iter(layers.values())))
  writer = store_lib.FeatureStoreWriter(
      directory, {name: (x.shape[1:], 'float32') for name, x in layers.items()},
      {'test': True}, num_rows=num, shard_rows=16)
  for k in range(writer.num_shards):
    start, stop = writer.shard_range(k)
    writer.write_shard(k, {n: x[start:stop] for n, x in layers.items()},
                       {f: np.asarray(v)[start:stop] for f, v in rows.items()})
  return writer.finalize()


def _one_hot_labels(classes, num_classes):
  return np.where(np.asarray(classes)[:, None] == np.arange(num_classes), 1,
                  -1).astype(np.int8)


def _reference_ap(scores, labels):
  """VOC07 11-point AP of one class, labels 0 ignored (written out)."""
  keep = labels != 0
  scores, labels = scores[keep], labels[keep]
  order = np.argsort(-scores, kind='stable')
  hits = labels[order] > 0
  tp, fp = np.cumsum(hits), np.cumsum(~hits)
  recall, precision = tp / hits.sum(), tp / (tp + fp)
  total = 0.0
  for t in np.arange(11) / 10:
    reached = precision[recall >= t]
    total += reached.max() if reached.size else 0.0
  return total / 11


def _reference_cell(train_x, train_labels, test_x, test_labels, tol):
  """Mean-norm-20 scaling, one LinearSVC per class (0 labels left out)."""
  scale = 20.0 / np.linalg.norm(train_x.astype(np.float64), axis=1).mean()
  scores = np.zeros((len(test_x), train_labels.shape[1]))
  for k in range(train_labels.shape[1]):
    keep = train_labels[:, k] != 0
    model = sk_svm.LinearSVC(loss='hinge', dual=True, C=1e-3,
                             class_weight={1: 2.0, -1: 1.0},
                             intercept_scaling=10.0, tol=tol,
                             max_iter=1_000_000, random_state=0)
    model.fit(train_x[keep] * scale, train_labels[keep, k])
    scores[:, k] = model.decision_function(test_x * scale)
  ap = np.array([_reference_ap(scores[:, k], test_labels[:, k])
                 for k in range(scores.shape[1])])
  return scale, scores, ap


@pytest.fixture(scope='module')
def tiny_split(tmp_path_factory):
  """Trainval (120 rows) and test (90 rows) stores with noisy labels."""
  rng = np.random.default_rng(0)
  stores, examples, raw = {}, {}, {}
  for split, num in (('trainval', 120), ('test', 90)):
    classes = rng.integers(0, _CLASSES, num)
    labels = _one_hot_labels(classes, _CLASSES)
    flip = rng.random(num) < 0.1                      # label noise
    labels[flip] = _one_hot_labels(rng.integers(0, _CLASSES, flip.sum()),
                                   _CLASSES)
    labels[rng.random(labels.shape) < 0.05] = 0       # ignored labels
    acts = _activations(rng, classes)
    fc = np.maximum(0.0, rng.normal(size=(num, _FILTERS)) + 2.0 * (
        classes[:, None] == np.arange(_FILTERS))).astype(np.float32)
    stores[split] = _write_store(
        str(tmp_path_factory.mktemp(split)), {'pool5': acts, 'fc7': fc},
        {'image_id': [f'{i:06d}' for i in range(num)],
         'label': classes.astype(np.int32), 'difficult': flip})
    examples[split] = classify.Examples(np.arange(num), labels,
                                        [f'{i:06d}' for i in range(num)])
    raw[split] = {'pool5': acts, 'fc7': fc}
  return stores, examples, raw


@pytest.mark.parametrize('layer, ablation, reference_features', [
    ('pool5', 'unroll', lambda a: a.transpose(0, 3, 1, 2).reshape(len(a), -1)),
    ('pool5', 'sp-max', lambda a: a.max(axis=(1, 2))),
    ('pool5', 'bin', lambda a: (a.transpose(0, 3, 1, 2).reshape(len(a), -1)
                                > 0).astype(np.float32)),
    ('fc7', 'unroll', lambda a: a),
])
def test_cell_equals_sklearn_reference(tiny_split, layer, ablation,
                                       reference_features):
  stores, examples, raw = tiny_split
  result = classify.evaluate_cell(
      stores['trainval'].layer(layer), examples['trainval'],
      stores['test'].layer(layer), examples['test'], ablation, svm=_TIGHT)
  scale, scores, ap = _reference_cell(
      reference_features(raw['trainval'][layer]), examples['trainval'].labels,
      reference_features(raw['test'][layer]), examples['test'].labels, 1e-6)
  np.testing.assert_allclose(result.scale, scale, rtol=1e-5)
  np.testing.assert_allclose(result.scores, scores,
                             atol=0.01 * np.abs(scores).max())
  np.testing.assert_allclose(result.ap, ap, atol=0.02)
  assert result.mean_ap == pytest.approx(result.ap.mean())
  assert np.all(ap > 0.4), ap     # the reference learns (chance ~0.33)


def test_dead_layer_gives_constant_scores():
  labels = _one_hot_labels(np.arange(12) % _CLASSES, _CLASSES)
  probe = classify.fit_probe(np.zeros((12, _FILTERS), np.float32), labels)
  assert probe.scale == 1.0 and not probe.weights.any()
  scores = classify.probe_scores(probe, np.ones((5, _FILTERS), np.float32))
  np.testing.assert_array_equal(scores, np.broadcast_to(probe.biases, (5, 3)))


def test_train_targets_hand_worked():
  labels = np.array([[1, -1], [0, 1], [-1, 0]], np.int8)
  targets, mask = classify.train_targets(labels, 'ignore')
  np.testing.assert_array_equal(targets, [[1, -1], [-1, 1], [-1, -1]])
  np.testing.assert_array_equal(mask, [[1, 1], [0, 1], [1, 0]])
  targets, mask = classify.train_targets(labels, 'positive')
  np.testing.assert_array_equal(targets, [[1, -1], [1, 1], [-1, 1]])
  assert mask.all()
  targets, _ = classify.train_targets(labels, 'negative')
  np.testing.assert_array_equal(targets, [[1, -1], [-1, 1], [-1, -1]])
  with pytest.raises(ValueError, match='label0'):
    classify.train_targets(labels, 'drop')


def test_shuffled_features_do_not_depend_on_chunking(tiny_split, monkeypatch):
  stores, examples, _ = tiny_split
  view, rows = stores['test'].layer('pool5'), examples['test'].rows[::-1]
  key = classify.jax.random.key(3)
  monkeypatch.setattr(classify, 'CHUNK_ELEMENTS', 45 * 36)  # 45-row chunks
  whole = classify.ablated_features(view, rows, 'sp-shuffle', key)
  # Rows 20..64 fall in one chunk here, across two chunks above.
  np.testing.assert_array_equal(
      classify.ablated_features(view, rows[20:65], 'sp-shuffle', key),
      whole[20:65])
  # Each map keeps its values (a permutation of its 9 positions).
  maps = view.read(rows).transpose(0, 3, 1, 2).reshape(len(rows), 4, 9)
  np.testing.assert_array_equal(np.sort(whole.reshape(len(rows), 4, 9), -1),
                                np.sort(maps, -1))


def test_split_examples_gtbox_keeps_or_drops_difficult(tiny_split):
  stores, _, raw = tiny_split
  store = stores['trainval']
  kept = classify.split_examples('gtbox', store, [], include_difficult=True)
  np.testing.assert_array_equal(kept.rows, np.arange(store.num_rows))
  classes = store.rows('label')
  np.testing.assert_array_equal(kept.labels, _one_hot_labels(classes, 20))
  dropped = classify.split_examples('gtbox', store, [],
                                    include_difficult=False)
  np.testing.assert_array_equal(
      dropped.rows, np.flatnonzero(~store.rows('difficult')))
  with pytest.raises(ValueError, match='one row per image'):
    classify.split_examples('pascal_cls', store, _images(3, 0))


def test_undefined_cells_and_table_columns():
  config = ml_collections.ConfigDict(dict(
      layers=('pool1', 'pool5', 'fc7'), ablations=('unroll', 'sp-max', 'bin'),
      net_layers={'fcft': ('fc7',)}, snapshots=(), nets_to_run=('pretrained',
                                                                 'fcft')))
  pretrained, fcft = classify.columns_of(config)
  assert classify.cells_of(config, pretrained) == [
      ('pool1', 'unroll'), ('pool1', 'sp-max'), ('pool1', 'bin'),
      ('pool5', 'unroll'), ('pool5', 'sp-max'), ('pool5', 'bin'),
      ('fc7', 'unroll'), ('fc7', 'bin')]
  assert classify.cells_of(config, fcft) == [('fc7', 'unroll'), ('fc7', 'bin')]
  config.snapshots, config.snapshot_columns = (19, 58), ('5000', '15000')
  columns = classify.columns_of(config)
  assert [(c.label, c.tag) for c in columns] == [
      ('5000', 'pretrained@19'), ('15000', 'pretrained@58')]
  assert classify.table_column(columns[0], 'bin', columns, ('bin',)) == '5000'
  assert classify.table_column(columns[0], 'bin', columns[:1],
                               ('unroll', 'bin')) == 'bin'
  assert classify.table_column(columns[1], 'bin', columns,
                               ('unroll', 'bin')) == '15000/bin'
  # Each layout keeps its own tables (Tables 4.1, 5.1, 2.4).
  assert classify.layout_name(config) == 'by_step_ablation'
  config.ablations = ('unroll',)
  assert classify.layout_name(config) == 'by_step'
  config.snapshots = ()
  assert classify.layout_name(config) == 'by_net'
  config.ablations = ('unroll', 'bin')
  assert classify.layout_name(config) == 'by_net_ablation'
  config.nets_to_run = ('pretrained',)
  assert classify.layout_name(config) == 'by_ablation'


# --- run(): orchestration, outputs and caching over stubbed nets and data ---

def _images(num, seed):
  """VocImages with 1-2 objects of the 20 classes, some difficult."""
  rng = np.random.default_rng(seed)
  images = []
  for i in range(num):
    count = 1 + i % 2
    labels = rng.integers(0, len(voc.VOC_CLASSES), count).astype(np.int32)
    labels[0] = i % len(voc.VOC_CLASSES)
    images.append(voc.VocImage(
        f'{seed}{i:05d}', '', 64, 48,
        np.tile(np.array([[1, 1, 32, 24]], np.int32), (count, 1)), labels,
        rng.random(count) < 0.2))
  return images


def _whole_store(directory, images, seed):
  """One row per image: pool5 maps lighting filters of its classes."""
  rng = np.random.default_rng(seed)
  acts = np.maximum(0.0, rng.normal(size=(len(images), 3, 3, 20)))
  for n, image in enumerate(images):
    acts[n, 1, 1, image.labels] += 4.0
  fc7 = np.maximum(0.0, rng.normal(size=(len(images), 20)))
  return _write_store(directory, {'pool5': acts.astype(np.float32),
                                  'fc7': fc7.astype(np.float32)},
                      {'image_id': [im.image_id for im in images],
                       'image_index': np.arange(len(images))})


def _run_config():
  config = config_lib.parse_arg('')
  config.task = 'classify'
  config.eval = 'pascal_cls'
  config.nets_to_run = ('pretrained',)
  config.snapshots = ()
  config.snapshot_columns = ()
  config.layers = ('pool5', 'fc7')
  config.ablations = ('unroll', 'sp-max')
  config.net_layers = {}
  config.label0 = 'ignore'
  config.include_difficult = True
  config.seed = 0
  config.paper_table = '5.1'
  config.data = datasets.data_config()
  config.nets = nets_lib.nets_config(pretrained='/nonexistent')
  config.extract = config_lib.parse_arg(
      '', layers=('pool5', 'fc7'), batch_size=8, encoding='float32')
  config.svm = config_lib.parse_arg(
      '', C=1e-3, pos_weight=2.0, bias_scale=10.0, tol=0.1, target_norm=20.0,
      seed=0)
  return config


@pytest.fixture
def stubbed(tmp_path, monkeypatch):
  """run() over synthetic images and stores; counts feature lookups."""
  images = {'trainval': _images(60, 1), 'test': _images(50, 2)}
  stores = {split: _whole_store(str(tmp_path / 'stores' / split),
                                images[split], seed)
            for seed, split in enumerate(('trainval', 'test'))}
  lookups = []

  def features(net, split_images, split, kind, layers, workdir, **kwargs):
    del workdir, kwargs
    assert kind == 'whole' and tuple(layers) == ('pool5', 'fc7')
    assert split_images is images[split]
    lookups.append((net.name, split))
    return stores[split]

  net = nets_lib.Net('pretrained', '/nonexistent', None, {}, 67, 5, None)
  monkeypatch.setattr(classify.datasets, 'check_voc', lambda data: None)
  monkeypatch.setattr(classify.datasets, 'voc_split',
                      lambda data, split: images[split])
  monkeypatch.setattr(classify.nets_lib, 'check_pretrained', lambda c: None)
  monkeypatch.setattr(classify.nets_lib, 'resolve', lambda c, name, w: net)
  monkeypatch.setattr(classify.feature_cache, 'features', features)
  return images, stores, lookups


def test_run_writes_tables_devkit_files_and_reuses_cells(tmp_path, stubbed,
                                                         monkeypatch):
  images, stores, lookups = stubbed
  config, workdir = _run_config(), str(tmp_path / 'work')
  summary = classify.run(config, workdir)
  out = os.path.join(workdir, 'classify', 'pascal_cls', 'by_ablation')

  # Table 5.1 layout: rows layers, columns ablations, sp-max on fc7 is '-'.
  with open(os.path.join(out, 'map.csv')) as f:
    table = list(csv.reader(f))
  assert table[0] == ['row', 'unroll', 'sp-max']
  assert [row[0] for row in table[1:]] == ['pool5', 'fc7']
  assert table[2][2] == ''
  with open(os.path.join(out, 'map.md')) as f:
    assert '| fc7 |' in f.read()

  # The pool5 unroll cell equals the core computed directly.
  labels = {s: voc.cls_labels(images[s]) for s in images}
  direct = classify.evaluate_cell(
      stores['trainval'].layer('pool5'),
      classify.Examples(np.arange(60), labels['trainval'], []),
      stores['test'].layer('pool5'),
      classify.Examples(np.arange(50), labels['test'], []), 'unroll')
  assert float(table[1][1]) == pytest.approx(direct.mean_ap * 100)
  assert summary['map']['pool5']['unroll'] == pytest.approx(
      direct.mean_ap * 100)
  assert direct.mean_ap > 0.5

  # Devkit result files of every class, scored back to the same AP.
  cell = os.path.join(workdir, 'classify', 'pascal_cls', 'cells',
                      'pretrained-pool5-unroll')
  ids, scores = metrics.read_cls_results(os.path.join(
      cell, 'results', 'comp1_cls_test_aeroplane.txt'))
  assert ids == [im.image_id for im in images['test']]
  assert metrics.cls_average_precision(
      scores, labels['test'][:, 0]) == pytest.approx(direct.ap[0])
  with open(os.path.join(out, 'ap_per_class.csv')) as f:
    assert [row[0] for row in csv.reader(f)][1:] == [
        'pretrained/pool5', 'pretrained/pool5/sp-max', 'pretrained/fc7']
  with open(os.path.join(out, 'summary.json')) as f:
    assert json.load(f)['paper_table'] == '5.1'

  # A rerun reuses every cell: no features read, no SVM trained.
  lookups.clear()
  monkeypatch.setattr(classify, 'evaluate_cell', _must_not_run)
  assert classify.run(config, workdir)['map'] == summary['map']
  assert not lookups

  # Another solver setting, or another net, invalidates the cached cells.
  config.svm.C = 1e-2
  with pytest.raises(AssertionError, match='recomputed'):
    classify.run(config, workdir)
  config.svm.C = 1e-3
  config.nets.pretrained = '/elsewhere'
  with pytest.raises(AssertionError, match='recomputed'):
    classify.run(config, workdir)


def _must_not_run(*args, **kwargs):
  raise AssertionError('a cached cell was recomputed')


def test_config_errors_name_the_key():
  config = _run_config()
  config.layers = ('pool5', 'conv3')
  with pytest.raises(ValueError, match='config.layers'):
    classify.run(config, '/nonexistent')
  config = _run_config()
  config.ablations = ('unroll', 'shuffle')
  with pytest.raises(ValueError, match='config.ablations'):
    classify.run(config, '/nonexistent')


def _clusters(rng, num, num_classes, dim):
  """Noisy ReLU features: class c's mean is high on unit c (overlapping)."""
  classes = np.arange(num) % num_classes
  features = np.maximum(0.0, rng.normal(size=(num, dim)) + 1.5 * (
      classes[:, None] == np.arange(dim)))
  return features.astype(np.float32), classes


def test_sun397_probe_equals_sklearn_one_vs_rest():
  """K one-vs-rest SVMs in one solve, argmax: as K LinearSVCs, argmax."""
  rng = np.random.default_rng(3)
  train_x, train_y = _clusters(rng, 150, 5, 8)
  test_x, test_y = _clusters(rng, 100, 5, 8)
  probe = classify.fit_probe(train_x, classify.box_labels(train_y, 5),
                             svm=_TIGHT)
  scores = classify.probe_scores(probe, test_x)
  _, reference, _ = _reference_cell(
      train_x, classify.box_labels(train_y, 5), test_x,
      classify.box_labels(test_y, 5), 1e-6)
  np.testing.assert_allclose(scores, reference,
                             atol=0.01 * np.abs(reference).max())
  predicted, expected = scores.argmax(1), reference.argmax(1)
  assert np.mean(predicted == expected) >= 0.97
  top1, mean_class = classify.multiclass_accuracy(scores, test_y)
  assert top1 == pytest.approx(np.mean(predicted == test_y))
  assert abs(top1 - np.mean(expected == test_y)) <= 0.03
  assert mean_class == pytest.approx(np.mean(
      [np.mean(predicted[test_y == k] == k) for k in range(5)]))
  assert 0.5 < top1 < 1.0, top1        # learns, not trivially (chance 0.2)


def test_multiclass_accuracy_hand_worked():
  scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.6, 0.4]])
  labels = np.array([0, 1, 1, 1])
  # Hits: yes, yes, no, no -> 2/4; class 0: 1/1, class 1: 1/3.
  assert classify.multiclass_accuracy(scores, labels) == pytest.approx(
      (0.5, (1.0 + 1 / 3) / 2))


def test_centre_crop_features_equal_a_direct_forward(tmp_path):
  """10 images in batches of 8 (the last padded): the eval transform, in
  source order, the padding dropped."""
  model_kwargs = {'num_classes': 5, 'width': 0.0625}
  params = caffenet.init_params(caffenet.CaffeNet(**model_kwargs),
                                jax.random.key(0), 67)
  checkpoints.save_params(str(tmp_path), params)
  net = nets_lib.Net('pretrained', str(tmp_path), None, model_kwargs, 67, 5,
                     None)
  rng = np.random.default_rng(0)
  source = [{'image': rng.integers(0, 256, (40 + i, 50, 3), np.uint8),
             'label': i % 3} for i in range(10)]
  mean = preprocess.mean_image(None, 72)
  features, labels = classify.centre_crop_features(
      net, source, 'fc7', batch_size=8, resize=72, mean=mean)
  images = np.stack([preprocess.center_crop(preprocess.to_caffe_input(
      preprocess.resize_ignore_aspect(e['image'], 72), mean), 67)
                     for e in source])
  _, out = caffenet.CaffeNet(**model_kwargs).apply(
      {'params': params}, images, train=False)
  np.testing.assert_allclose(features, np.asarray(out['fc7']), rtol=1e-4,
                             atol=1e-4)
  np.testing.assert_array_equal(labels, [e['label'] for e in source])


def _sun397_config():
  return ml_collections.ConfigDict(dict(
      task='classify', eval='sun397', layer='fc7',
      input=dict(dataset='demo', data_dir='', resize=72, image_size=67,
                 mean_path='', demo=dict(num_classes=3)),
      nets=nets_lib.nets_config(pretrained='/p', input_size=67),
      extract=dict(batch_size=8), svm=_TIGHT._asdict()))


def test_sun397_probe_writes_and_reuses_its_summary(tmp_path, monkeypatch):
  rng = np.random.default_rng(5)
  data = {'train': _clusters(rng, 60, 3, 6), 'test': _clusters(rng, 30, 3, 6)}
  net = nets_lib.Net('pretrained', '/p', None, {}, 67, 5, None)
  extracted = []

  class Source(list):
    num_classes = 3

  def source(name, split, data_dir, workdir, demo_options):
    assert (name, data_dir, workdir) == ('demo', None, str(tmp_path))
    assert demo_options == {'num_classes': 3}
    return Source([split])

  def features(net_, split_source, layer, *, batch_size, resize, mean):
    assert (net_, layer, batch_size, resize) == (net, 'fc7', 8, 72)
    assert mean.shape == (72, 72, 3)
    extracted.append(split_source[0])
    return data[split_source[0]]

  monkeypatch.setattr(classify.nets_lib, 'resolve', lambda c, name, w: net)
  monkeypatch.setattr(classify.sources, 'classification_source', source)
  monkeypatch.setattr(classify, 'centre_crop_features', features)
  config = _sun397_config()
  summary = classify.run(config, str(tmp_path))
  assert extracted == ['train', 'test']
  probe = classify.fit_probe(data['train'][0],
                             classify.box_labels(data['train'][1], 3),
                             svm=_TIGHT)
  top1, mean_class = classify.multiclass_accuracy(
      classify.probe_scores(probe, data['test'][0]), data['test'][1])
  assert summary['accuracy'] == pytest.approx(100 * top1)
  assert summary['mean_class_accuracy'] == pytest.approx(100 * mean_class)
  assert (summary['num_train'], summary['num_test'],
          summary['num_classes']) == (60, 30, 3)
  with open(tmp_path / classify.SUN397_SUMMARY) as f:
    assert json.load(f) == summary
  # A rerun reuses it; other SVM settings compute it again.
  assert classify.run(config, str(tmp_path)) == summary
  assert extracted == ['train', 'test']
  config.svm.C = 1e-2
  classify.run(config, str(tmp_path))
  assert extracted == ['train', 'test'] * 2


@pytest.mark.slow
def test_runlocal_pascal_cls_end_to_end(tmp_path):
  """The demo config from nothing: demo pretraining (cached), features, SVMs."""
  config = config_lib.load_sibling_config(
      os.path.join(os.path.dirname(__file__), '..', 'configs', 'x.py'),
      'pascal_cls.py', 'runlocal,layers=pool5+fc7')
  summary = classify.run(config, str(tmp_path))
  labels = voc.cls_labels(datasets.voc_split(config.data, 'test'))
  # The demo features are weak; they must beat scores that carry nothing.
  _, constant = metrics.cls_map(np.zeros(labels.shape), labels)
  for layer in ('pool5', 'fc7'):
    assert summary['map'][layer]['pretrained'] > constant * 100 + 1, (
        summary['map'], constant)


@pytest.mark.slow
def test_demo_pretrained_features_beat_raw_pixels(tmp_path):
  """The demo world is a real learning problem: GT-box classification on
  the demo pretrained net's features beats the same SVMs on raw pixels.

  Measured (demo pretraining 99 px, 800 steps): raw 32x32 pixels mAP 36.2;
  pretrained pool5 56.3, fc7 57.7.
  """
  config = config_lib.load_sibling_config(
      os.path.join(os.path.dirname(__file__), '..', 'configs', 'x.py'),
      'gtbox_cls.py', 'runlocal,net=pretrained,layers=pool5+fc7')
  summary = classify.run(config, str(tmp_path))
  data = config.data
  devkit = synthetic.demo_voc(data.data_dir or None, seed=data.demo_seed,
                              num_trainval=data.demo_trainval,
                              num_test=data.demo_test)
  pixels = {}
  for split in ('trainval', 'test'):
    crops, classes = synthetic.gt_box_crops(devkit, split, size=32)
    pixels[split] = (crops.reshape(len(crops), -1).astype(np.float32) - 128,
                     classify.box_labels(classes, len(voc.VOC_CLASSES)))
  probe = classify.fit_probe(*pixels['trainval'])
  _, pixel_map = metrics.cls_map(
      classify.probe_scores(probe, pixels['test'][0]), pixels['test'][1])
  for layer in ('pool5', 'fc7'):
    assert summary['map'][layer]['pretrained'] > 100 * pixel_map + 10, (
        summary['map'], pixel_map)
