"""The `detect` task: R-CNN on PASCAL VOC 2007, end to end (SPEC 3-5).

proposals (trainval, test) -> the chosen net (pretrained, or FT / FC-FT
finetuned on R-CNN windows) -> features of GT boxes and proposals into a
feature store -> ablation + scaling to mean norm 20 -> per-class SVMs with
hard-negative mining -> test scoring, top 100 per image and class, NMS 0.3
-> VOC07 detection AP. With `config.bbox_reg.enabled`, the same top
detections are also moved by per-class box regressors on pool5 before NMS
and reported separately (R-CNN's "BB" rows).

Every step is cached in the workdir and reused by a rerun (another layer or
ablation reuses proposals, the finetuned net and the features; a cached
array file records the settings and the features it was computed from, and
is recomputed when they change):

  <workdir>/proposals/<split>/<image_id>.npy
  <workdir>/nets/<net>/                      finetuning run (ft, fcft, ...)
  <workdir>/features/<net>/<split>/          feature store (all extract_layers)
  <workdir>/detect/<net>-<layer>-<ablation>/ svm.npz, candidates.npz,
      detections.npz, results/comp4_det_test_<class>.txt, ap.csv, ap.md,
      pr.png, summary.json
  <workdir>/detect/<net>-<layer>-<ablation>-bboxreg/  regressor.npz,
      detections.npz and the same reports, with box regression
  <workdir>/detect/chance.npz                AP of random scores on the test
      proposals (`chance_mAP` in every summary.json), one per proposal set

Each stage's wall time is logged and kept in summary.json (`seconds`).
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Iterator, Sequence

from absl import logging
import ml_collections
import numpy as np

from cnnjax import config_lib
from cnnjax import metrics
from cnnjax import nets
from cnnjax import stepcache
from cnnjax.data import datasets
from cnnjax.data import proposals as proposals_lib
from cnnjax.data.voc import VOC_CLASSES
from cnnjax.data.voc import VocImage
from cnnjax.detection import mining
from cnnjax.detection import rcnn
from cnnjax.features import cache as feature_cache
from cnnjax.features import extract
from cnnjax.reporting import tables

# The layer and ablation of R-CNN's box regression.
BBOX_REG_LAYER = 'pool5'
_DETECTION_FIELDS = ('image_index', 'scores', 'boxes')


def split_proposals(config: ml_collections.ConfigDict, images, split: str,
                    workdir: str) -> list[np.ndarray]:
  """Selective search (cached per image) or R-CNN's precomputed .mat boxes."""
  mat = config.proposals.get(f'{split}_mat', '')
  if mat:
    return proposals_lib.load_rcnn_mat(mat, [im.image_id for im in images])
  return proposals_lib.compute_proposals(
      images, os.path.join(workdir, 'proposals', split),
      num_workers=config.proposals.num_workers)


def check_inputs(config: ml_collections.ConfigDict) -> None:
  """Fails at once, with every preparation step missing, before any work.

  Raises:
    FileNotFoundError: VOC2007 or the pretrained weights are missing; the
      message holds the steps to prepare each one that is.
  """
  problems = []
  for check in (lambda: datasets.check_voc(config.data),
                lambda: nets.check_pretrained(config)):
    try:
      check()
    except FileNotFoundError as error:
      problems.append(str(error))
  if problems:
    raise FileNotFoundError('\n\n'.join(problems))


class StageTimes(dict):
  """Wall seconds of each stage of a run, logged as each one ends."""

  @contextlib.contextmanager
  def __call__(self, stage: str) -> Iterator[None]:
    start = time.time()
    yield
    self[stage] = round(time.time() - start, 1)
    logging.info('detect: stage %s took %.1fs', stage, self[stage])


def _detections_arrays(found: Sequence[metrics.Detections]) -> dict:
  return {f'{field}_{k}': getattr(dets, field)
          for k, dets in enumerate(found) for field in _DETECTION_FIELDS}


def _detections_of(arrays: dict) -> list[metrics.Detections]:
  return [metrics.Detections(*(arrays[f'{field}_{k}']
                               for field in _DETECTION_FIELDS))
          for k in range(len(VOC_CLASSES))]


def report(out_dir: str, row: str, detections: Sequence[metrics.Detections],
           test: Sequence[VocImage], summary: dict) -> dict:
  """Devkit result files, the AP table, PR curves and summary.json."""
  ap, mean_ap = metrics.det_map(detections, test)
  for k, name in enumerate(VOC_CLASSES):
    metrics.write_det_results(
        os.path.join(out_dir, 'results'), name,
        [test[i].image_id for i in detections[k].image_index],
        detections[k].scores, detections[k].boxes)
  tables.write_class_table(os.path.join(out_dir, 'ap'), {row: ap * 100},
                           title=f'VOC2007 test detection AP (%), {row}')
  tables.plot_pr_curves(os.path.join(out_dir, 'pr.png'), detections, test,
                        title=f'PR curves, {row}')
  summary = {**summary, 'mAP': mean_ap * 100,
             'ap': dict(zip(VOC_CLASSES, (ap * 100).tolist()))}
  config_lib.write_json_atomic(os.path.join(out_dir, 'summary.json'), summary)
  chance = (f' (chance {summary["chance_mAP"]:.1f})'
            if 'chance_mAP' in summary else '')
  logging.info('detect %s: mAP %.1f%s', row, mean_ap * 100, chance)
  print(f'{row}: VOC2007 test mAP {mean_ap * 100:.1f}{chance}  ({out_dir})')
  return summary


def chance_ap(reader: rcnn.AblatedRows, test: Sequence[VocImage],
              test_config: ml_collections.ConfigDict) -> dict:
  """AP of random scores on the same test proposals, top-k and NMS: the
  baseline every row of the detection tables must beat."""
  candidates = rcnn.chance_candidates(reader, len(VOC_CLASSES),
                                      top_k=test_config.top_k)
  detections = rcnn.suppress(
      rcnn.candidate_boxes(reader, candidates['rows']), candidates['scores'],
      candidates['rows'] >= 0, test_config.nms_threshold)
  ap, mean_ap = metrics.det_map(detections, test)
  return {'ap': ap, 'mean_ap': np.float64(mean_ap)}


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs (or resumes) one detection experiment; returns its summary.

  With box regression enabled, the summary of the regressed detections is
  under the key 'bbox_reg_summary'.
  """
  layer, ablation = config.layer, config.ablation
  bbox_reg = config.bbox_reg.enabled
  needed = (layer,) + ((BBOX_REG_LAYER,) if bbox_reg else ())
  missing = [name for name in needed if name not in config.extract.layers]
  if missing:
    raise ValueError(f'config.extract.layers={tuple(config.extract.layers)} '
                     f'lacks {missing} (config.layer={layer!r}, '
                     f'config.bbox_reg.enabled={bbox_reg})')
  check_inputs(config)
  out_dir = os.path.join(workdir, 'detect', f'{config.net}-{layer}-{ablation}')
  stage = StageTimes()

  trainval = datasets.voc_split(config.data, 'trainval')
  test = datasets.voc_split(config.data, 'test')
  logging.info('detect: %d trainval, %d test images', len(trainval), len(test))
  with stage('proposals'):
    trainval_boxes = split_proposals(config, trainval, 'trainval', workdir)
    test_boxes = split_proposals(config, test, 'test', workdir)
  with stage('net'):
    net = nets.resolve(config, config.net, workdir)
  with stage('features'):
    train_store, test_store = (
        feature_cache.features(net, images, split, 'proposals',
                               config.extract.layers, workdir,
                               batch_size=config.extract.batch_size,
                               encoding=config.extract.encoding,
                               proposals=boxes)
        for images, boxes, split in ((trainval, trainval_boxes, 'trainval'),
                                     (test, test_boxes, 'test')))
  svm_config = rcnn.SvmConfig(**config.svm.to_dict())
  # Different keys for the two splits: sp-shuffle permutations independent.
  train_reader = rcnn.AblatedRows(train_store, layer, ablation, seed=0)
  test_reader = rcnn.AblatedRows(test_store, layer, ablation, seed=1)
  svm_settings = dict(features=stepcache.store_signature(train_store),
                      layer=layer, ablation=ablation,
                      svm=config.svm.to_dict(), mining=config.mining.to_dict())

  def train_svms() -> dict:
    scale = rcnn.feature_scale(train_reader, svm_config)
    weights, biases = rcnn.train_detectors(
        train_reader, trainval, scale, len(VOC_CLASSES), svm_config,
        mining.MiningConfig(**config.mining.to_dict()))
    return {'weights': weights, 'biases': biases, 'scale': np.float32(scale)}

  with stage('svm_training'):
    svm = stepcache.cached_arrays(os.path.join(out_dir, 'svm.npz'),
                                  train_svms, **svm_settings)
  candidate_settings = dict(svm=svm_settings,
                            test=stepcache.store_signature(test_store),
                            top_k=config.test.top_k)
  with stage('test_scoring'):
    candidates = stepcache.cached_arrays(
        os.path.join(out_dir, 'candidates.npz'),
        lambda: rcnn.score_candidates(
            test_reader, float(svm['scale']), svm['weights'], svm['biases'],
            top_k=config.test.top_k),
        **candidate_settings)
  valid = candidates['rows'] >= 0
  with stage('nms'):
    detections = _detections_of(stepcache.cached_arrays(
        os.path.join(out_dir, 'detections.npz'),
        lambda: _detections_arrays(rcnn.suppress(
            rcnn.candidate_boxes(test_reader, candidates['rows']),
            candidates['scores'], valid, config.test.nms_threshold)),
        candidates=candidate_settings,
        nms_threshold=config.test.nms_threshold))

  with stage('chance'):
    # One per proposal set: every net, layer and ablation shares it.
    chance = stepcache.cached_arrays(
        os.path.join(workdir, 'detect', 'chance.npz'),
        lambda: chance_ap(test_reader, test, config.test),
        proposals=extract.sha256_of_arrays(test_boxes),
        test_config=config.test.to_dict())

  row = f'{net.name}/{layer}' + ('' if ablation == 'unroll' else f'/{ablation}')
  summary = {'net': net.name, 'layer': layer, 'ablation': ablation,
             'bbox_reg': False, 'num_trainval': len(trainval),
             'num_test': len(test),
             'proposals_per_image': float(np.mean([len(b)
                                                   for b in test_boxes])),
             'chance_mAP': float(chance['mean_ap']) * 100}
  if not bbox_reg:
    return report(out_dir, row, detections, test,
                  {**summary, 'seconds': dict(stage)})
  plain_seconds = dict(stage)
  plain = report(out_dir, row, detections, test,
                 {**summary, 'seconds': plain_seconds})

  reg_dir = f'{out_dir}-bboxreg'
  train_pool5 = rcnn.AblatedRows(train_store, BBOX_REG_LAYER, 'unroll')
  test_pool5 = rcnn.AblatedRows(test_store, BBOX_REG_LAYER, 'unroll')
  reg_settings = dict(features=stepcache.store_signature(train_store),
                      svm=config.svm.to_dict(),
                      bbox_reg=config.bbox_reg.to_dict())

  def train_regressors() -> dict:
    scale = rcnn.feature_scale(train_pool5, svm_config)
    weights, biases = rcnn.train_box_regressors(
        train_pool5, trainval, scale, len(VOC_CLASSES),
        min_overlap=config.bbox_reg.min_overlap,
        ridge_lambda=config.bbox_reg.ridge_lambda)
    return {'weights': weights, 'biases': biases, 'scale': np.float64(scale)}

  with stage('bbox_reg_training'):
    regressor = stepcache.cached_arrays(
        os.path.join(reg_dir, 'regressor.npz'), train_regressors,
        **reg_settings)

  def regressed_detections() -> dict:
    boxes = rcnn.regress_candidates(
        test_pool5, float(regressor['scale']), regressor['weights'],
        regressor['biases'], candidates['rows'], test)
    return _detections_arrays(rcnn.suppress(
        boxes, candidates['scores'], valid, config.test.nms_threshold))

  with stage('bbox_reg_test'):
    moved = _detections_of(stepcache.cached_arrays(
        os.path.join(reg_dir, 'detections.npz'), regressed_detections,
        candidates=candidate_settings, regressor=reg_settings,
        test=stepcache.store_signature(test_store),
        nms_threshold=config.test.nms_threshold))
  reg_seconds = {name: seconds for name, seconds in stage.items()
                 if name not in plain_seconds}
  plain['bbox_reg_summary'] = report(
      reg_dir, f'{row} BB', moved, test,
      {**summary, 'bbox_reg': True, 'seconds': reg_seconds})
  return plain
