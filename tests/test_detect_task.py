"""The detect task: its steps, their caches and the box-regression run."""

import os

import numpy as np
import pytest

from cnnjax import config_lib
from cnnjax import metrics
from cnnjax import nets
from cnnjax.data import datasets
from cnnjax.data import regions
from cnnjax.data.voc import VocImage
from cnnjax.detection import bbox_reg
from cnnjax.detection import rcnn
from cnnjax.detection import task
from cnnjax.features import cache as feature_cache
from cnnjax.features import store as store_lib
from cnnjax.reporting import tables

CONFIGS = os.path.join(os.path.dirname(__file__), '..', 'configs', 'x.py')


def _config(arg):
  return config_lib.load_sibling_config(CONFIGS, 'pascal_det.py', arg)


def test_full_scale_without_voc_or_weights_fails_with_both_recipes(tmp_path):
  config = _config(f'devkit_dir={tmp_path}/VOCdevkit,layer=pool5')
  with pytest.raises(FileNotFoundError) as error:
    task.run(config, str(tmp_path))
  message = str(error.value)
  assert 'VOCtrainval_06-Nov-2007.tar' in message
  assert 'import_caffe' in message
  assert not os.listdir(tmp_path)                       # Nothing started.


def _split(tmp_path, split, num_images, seed):
  """One object per image; fc7 encodes the class of proposals on the object,
  pool5 the offsets from a proposal to its best GT box."""
  rng = np.random.default_rng(seed)
  images, fc7, pool5 = [], [], []
  rows = {'image_index': [], 'box': [], 'is_gt': [], 'label': []}
  for i in range(num_images):
    label = i % 3
    gt = np.array([[20, 20, 60, 60]], np.int32) + rng.integers(0, 20, 4)
    images.append(VocImage(f'{split}{i:04d}', '', 100, 100, gt,
                           np.array([label], np.int32), np.array([False])))
    near = gt + rng.integers(-6, 7, (4, 4))
    far = np.array([[1, 1, 15, 15], [80, 80, 99, 99], [70, 1, 99, 30]])
    boxes = np.concatenate([gt, near, far]).astype(np.int32)
    overlaps = regions.iou(boxes, gt)[:, 0]
    _, _, offsets = bbox_reg.regression_pairs(boxes, gt, [label], -1.0)
    for b, box in enumerate(boxes):
      f = rng.normal(0, 0.1, 8)
      f[label if overlaps[b] >= 0.5 else 3] += 3.0
      fc7.append(f)
      pool5.append(offsets[b] * 5 + rng.normal(0, 1e-3, 4))
      rows['image_index'].append(i)
      rows['box'].append(box)
      rows['is_gt'].append(b == 0)
      rows['label'].append(label if b == 0 else -1)
  writer = store_lib.FeatureStoreWriter(
      str(tmp_path / f'{split}_store'),
      {'fc7': ((8,), 'float32'), 'pool5': ((4,), 'float32')},
      num_rows=len(fc7), shard_rows=len(fc7),
      metadata={'config_hash': f'{split}{seed}'})
  writer.write_shard(0, {'fc7': np.array(fc7, np.float32),
                         'pool5': np.array(pool5, np.float32)},
                     {k: np.array(v) for k, v in rows.items()})
  return images, writer.finalize()


def test_rerun_reuses_every_step_and_box_regression_is_separate(
    tmp_path, monkeypatch):
  splits = {'trainval': _split(tmp_path, 'trainval', 9, 0),
            'test': _split(tmp_path, 'test', 9, 1)}
  monkeypatch.setattr(datasets, 'voc_split',
                      lambda data, split: splits[split][0])
  monkeypatch.setattr(task, 'split_proposals',
                      lambda config, images, split, workdir: [
                          np.zeros((7, 4))] * len(images))
  # The figure is the reporting module's (slow to draw, tested there).
  monkeypatch.setattr(tables, 'plot_pr_curves',
                      lambda path, *args, **kwargs: open(path, 'w').close())
  monkeypatch.setattr(nets, 'resolve', lambda config, name, workdir: (
      nets.Net(name, '', None, {}, 64, 5, None)))
  monkeypatch.setattr(feature_cache, 'features',
                      lambda net, images, split, *a, **k: splits[split][1])
  calls = []
  for name in ('train_detectors', 'score_candidates', 'train_box_regressors',
               'regress_candidates'):
    def counted(*args, _fn=getattr(rcnn, name), _name=name, **kwargs):
      calls.append(_name)
      return _fn(*args, **kwargs)
    monkeypatch.setattr(rcnn, name, counted)

  workdir = str(tmp_path / 'work')
  config = _config('runlocal,layer=fc7,bbox_reg')
  config.bbox_reg.ridge_lambda = 1e-3
  summary = task.run(config, workdir)
  assert sorted(calls) == ['regress_candidates', 'score_candidates',
                           'train_box_regressors', 'train_detectors']
  plain_dir = os.path.join(workdir, 'detect', 'pretrained-fc7-unroll')
  reg_dir = plain_dir + '-bboxreg'
  for out_dir in (plain_dir, reg_dir):
    for name in ('summary.json', 'ap.csv', 'ap.md', 'pr.png',
                 'results/comp4_det_test_aeroplane.txt', 'detections.npz'):
      assert os.path.exists(os.path.join(out_dir, name)), (out_dir, name)
  # Three classes present, found perfectly; the boxes of the regressed run
  # sit on the GT boxes (the offsets are linear in pool5 here).
  assert summary['ap']['aeroplane'] == pytest.approx(100.0)
  reg = summary['bbox_reg_summary']
  assert reg['bbox_reg'] and not summary['bbox_reg']
  assert reg['mAP'] == pytest.approx(summary['mAP'])
  test_images = splits['test'][0]
  image_ids, _, boxes = metrics.read_det_results(os.path.join(
      reg_dir, 'results', 'comp4_det_test_aeroplane.txt'))
  by_id = {im.image_id: im.boxes[0] for im in test_images}
  np.testing.assert_allclose(boxes[0], by_id[image_ids[0]], atol=0.05)
  assert set(summary['seconds']) >= {'proposals', 'features', 'svm_training',
                                     'test_scoring', 'nms'}
  assert set(reg['seconds']) == {'bbox_reg_training', 'bbox_reg_test'}

  calls.clear()
  again = task.run(config, workdir)
  assert calls == []
  assert again['mAP'] == summary['mAP']
  assert again['bbox_reg_summary']['mAP'] == reg['mAP']
  # New settings: the steps that depend on them run again.
  config.bbox_reg.min_overlap = 0.7
  task.run(config, workdir)
  assert sorted(calls) == ['regress_candidates', 'train_box_regressors']


VOC_MINI = os.path.join(os.path.dirname(__file__), '..', '..', 'shared',
                        'data', 'voc_mini', 'VOCdevkit')


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(VOC_MINI),
                    reason=f'voc_mini fixture absent at {VOC_MINI}')
def test_full_scale_path_on_voc_mini_with_imported_weights(tmp_path):
  """The full-scale recipe end to end (~3 min): real VOC2007 files, R-CNN's
  selective search (~2,000 boxes per image), Caffe weights through the
  import tool (random here: the released ones cannot be downloaded), 227 px
  warps of the full-width net, mining, NMS, box regression, devkit files."""
  import caffe_numpy_reference as ref  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from cnnjax.models import caffenet  # pylint: disable=g-import-not-at-top
  from cnnjax.tools import import_caffe  # pylint: disable=g-import-not-at-top

  shapes = jax.eval_shape(
      caffenet.CaffeNet(num_classes=1000).init, jax.random.key(0),
      jax.ShapeDtypeStruct((1, 227, 227, 3), np.float32))['params']
  weights = ref.random_caffe_params(np.random.default_rng(0), shapes)
  np.save(tmp_path / 'caffenet.npy',
          {name: [w, b] for name, (w, b) in weights.items()},
          allow_pickle=True)
  np.save(tmp_path / 'mean.npy', np.full((3, 256, 256), 117.0, np.float32))
  imported = str(tmp_path / 'caffenet')
  import_caffe.main(['--npy', str(tmp_path / 'caffenet.npy'), '--mean',
                     str(tmp_path / 'mean.npy'), '--out', imported])

  config = _config(f'devkit_dir={VOC_MINI},pretrained={imported},'
                   f'mean_path={imported}/mean.npy,layer=pool5,bbox_reg')
  assert config.extract.layers == ('pool5',) and not config.runlocal
  summary = task.run(config, str(tmp_path / 'work'))
  assert summary['net'] == 'pretrained' and summary['layer'] == 'pool5'
  assert summary['proposals_per_image'] > 1000
  assert len(summary['ap']) == 20 and np.isfinite(summary['mAP'])
  assert 0 <= summary['chance_mAP'] < 100
  out_dir = tmp_path / 'work' / 'detect' / 'pretrained-pool5-unroll'
  for name in ('ap.md', 'pr.png', 'results/comp4_det_test_person.txt'):
    assert (out_dir / name).exists(), name
  assert summary['bbox_reg_summary']['bbox_reg']
