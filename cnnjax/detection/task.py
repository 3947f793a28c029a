"""The `detect` task: R-CNN on PASCAL VOC 2007, end to end (SPEC 3-5).

proposals (trainval, test) -> the chosen net (pretrained, or FT / FC-FT
finetuned on R-CNN windows) -> features of GT boxes and proposals into a
feature store -> ablation + scaling to mean norm 20 -> per-class SVMs with
hard-negative mining -> test scoring, top 100 per image and class, NMS 0.3
-> VOC07 detection AP.

Every step is cached in the workdir and reused by a rerun (another layer or
ablation reuses proposals, the finetuned net and the features):

  <workdir>/proposals/<split>/<image_id>.npy
  <workdir>/nets/<net>/                      finetuning run (ft, fcft, ...)
  <workdir>/features/<net>/<split>/          feature store (all extract_layers)
  <workdir>/detect/<net>-<layer>-<ablation>/ svm.npz, detections.npz,
      results/comp4_det_test_<class>.txt, ap.csv, ap.md, pr.png, summary.json
"""

from __future__ import annotations

import os

from absl import logging
import ml_collections
import numpy as np

from cnnjax import config_lib
from cnnjax import metrics
from cnnjax import nets
from cnnjax.data import datasets
from cnnjax.data import proposals as proposals_lib
from cnnjax.data.voc import VOC_CLASSES
from cnnjax.detection import mining
from cnnjax.detection import rcnn
from cnnjax.features import cache as feature_cache
from cnnjax.reporting import tables


def split_proposals(config: ml_collections.ConfigDict, images, split: str,
                    workdir: str) -> list[np.ndarray]:
  """Selective search (cached per image) or R-CNN's precomputed .mat boxes."""
  mat = config.proposals.get(f'{split}_mat', '')
  if mat:
    return proposals_lib.load_rcnn_mat(mat, [im.image_id for im in images])
  return proposals_lib.compute_proposals(
      images, os.path.join(workdir, 'proposals', split),
      num_workers=config.proposals.num_workers)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs (or resumes) one detection experiment; returns its summary."""
  layer, ablation = config.layer, config.ablation
  if layer not in config.extract.layers:
    raise ValueError(f'config.layer={layer!r} is not among '
                     f'config.extract.layers={tuple(config.extract.layers)}')
  out_dir = os.path.join(workdir, 'detect', f'{config.net}-{layer}-{ablation}')
  summary_path = os.path.join(out_dir, 'summary.json')

  datasets.check_voc(config.data)
  nets.check_pretrained(config)
  trainval = datasets.voc_split(config.data, 'trainval')
  test = datasets.voc_split(config.data, 'test')
  logging.info('detect: %d trainval, %d test images', len(trainval), len(test))
  trainval_boxes = split_proposals(config, trainval, 'trainval', workdir)
  test_boxes = split_proposals(config, test, 'test', workdir)
  net = nets.resolve(config, config.net, workdir)

  train_store, test_store = (
      feature_cache.features(net, images, split, 'proposals',
                             config.extract.layers, workdir,
                             batch_size=config.extract.batch_size,
                             encoding=config.extract.encoding,
                             proposals=boxes)
      for images, boxes, split in ((trainval, trainval_boxes, 'trainval'),
                                   (test, test_boxes, 'test')))
  svm_config = rcnn.SvmConfig(**config.svm.to_dict())
  train_reader = rcnn.AblatedRows(train_store, layer, ablation)
  test_reader = rcnn.AblatedRows(test_store, layer, ablation)

  def train_svms() -> dict:
    scale = rcnn.feature_scale(train_reader, svm_config)
    weights, biases = rcnn.train_detectors(
        train_reader, trainval, scale, len(VOC_CLASSES), svm_config,
        mining.MiningConfig(**config.mining.to_dict()), log=logging.info)
    return {'weights': weights, 'biases': biases, 'scale': np.float32(scale)}

  svm = rcnn.load_or(os.path.join(out_dir, 'svm.npz'), train_svms)

  def test_detections() -> dict:
    found = rcnn.detect(test_reader, float(svm['scale']), svm['weights'],
                        svm['biases'], top_k=config.test.top_k,
                        nms_threshold=config.test.nms_threshold,
                        log=logging.info)
    return {f'{field}_{k}': getattr(dets, field)
            for k, dets in enumerate(found)
            for field in ('image_index', 'scores', 'boxes')}

  cached = rcnn.load_or(os.path.join(out_dir, 'detections.npz'),
                        test_detections)
  detections = [metrics.Detections(cached[f'image_index_{k}'],
                                   cached[f'scores_{k}'], cached[f'boxes_{k}'])
                for k in range(len(VOC_CLASSES))]
  ap, mean_ap = metrics.det_map(detections, test)
  results_dir = os.path.join(out_dir, 'results')
  for k, name in enumerate(VOC_CLASSES):
    metrics.write_det_results(
        results_dir, name,
        [test[i].image_id for i in detections[k].image_index],
        detections[k].scores, detections[k].boxes)
  row = f'{net.name}/{layer}' + ('' if ablation == 'unroll' else f'/{ablation}')
  tables.write_class_table(os.path.join(out_dir, 'ap'), {row: ap * 100},
                           title=f'VOC2007 test detection AP (%), {row}')
  tables.plot_pr_curves(os.path.join(out_dir, 'pr.png'), detections, test,
                        title=f'PR curves, {row}')
  summary = {'net': net.name, 'layer': layer, 'ablation': ablation,
             'mAP': mean_ap * 100,
             'ap': dict(zip(VOC_CLASSES, (ap * 100).tolist())),
             'num_trainval': len(trainval), 'num_test': len(test),
             'proposals_per_image': float(np.mean([len(b) for b in test_boxes]))}
  config_lib.write_json_atomic(summary_path, summary)
  logging.info('detect %s: mAP %.1f', row, mean_ap * 100)
  print(f'{row}: VOC2007 test mAP {mean_ap * 100:.1f}  ({out_dir})')
  return summary
