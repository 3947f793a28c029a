r"""R-CNN detection on PASCAL VOC 2007: seeds Tables 2.2, 2.3, 4.2 and 5.2.

The project's main job (SPEC 3-5): selective-search proposals -> the chosen
net (pretrained CaffeNet, or FT / FC-FT / 50-50 finetuned on R-CNN windows)
-> features of one layer (pool5, fc6 or fc7, optionally ablated) -> per-class
linear SVMs with hard-negative mining -> NMS -> VOC2007 test AP per class.

Full scale (a GPU machine, VOC2007 and CaffeNet weights prepared; a missing
one fails at once with the steps to prepare it):

  python -m cnnjax.main --config configs/pascal_det.py:layer=fc7,net=ft,\
devkit_dir=~/data/VOCdevkit,pretrained=~/weights/caffenet \
      --workdir ~/runs/pascal_det

Expected (seeds Table 2.3, VOC07 test mAP): pretrained pool5 45.0, fc7 45.5;
FT pool5 47.6, fc6 53.1, fc7 54.1; FC-FT fc6 51.0, fc7 53.3; 50-50 (Table 4.2)
pool5 44.1, fc7 50.5; ablations on pool5 (Table 5.2): sp-max 25.4, bin 45.7.
R-CNN's own figures (SPEC 4): no FT fc7 44.7, FT fc7 54.2, FT fc7 with
bounding-box regression 58.5.

`:bbox_reg` adds R-CNN's class-specific box regression (ridge on pool5 of the
same net, trained on trainval proposals with IoU > 0.6 to their GT) applied
to the top detections before NMS; the plain run's outputs are written as
always and the regressed ones beside them, in
`<workdir>/detect/<net>-<layer>-<ablation>-bboxreg/` (the seeds' tables are
without it). At full scale it extracts pool5 in addition to `layer`.

Demo (`:runlocal`): the embedded demo VOC data (300 trainval + 300 test
images of 160x120), the demo CaffeNet at the demo input size of
configs/pascal_finetune.py (pretrained on the demo classification set first
if absent), pool5/fc6/fc7 extracted once:

  python -m cnnjax.main --config configs/pascal_det.py:runlocal \
      --workdir /tmp/pascal_det_demo

Expected: well above chance, the mAP of random scores on the same
proposals (in every summary.json as `chance_mAP`). Measured on the idle
2-core CPU, nothing cached: pretrained fc7 mAP 26.4 (chance 0.6) in 2 min
50 s (stages: selective search 23 s, the demo pretraining 75 s, proposal
features 61 s, SVMs with mining 9 s); `bash launch/demo.sh` from a fresh
clone, its install included, 3 min 43 s. A rerun: 11 s (every step
cached); with another layer or ablation it reuses the proposals, nets and
features (`:runlocal,layer=pool5`: 20 s, mAP 26.8). The other demo nets
(configs/study.py runs them all): FT pool5 29.4, fc6 29.1, fc7 26.8; FC-FT
fc6 29.1, fc7 24.1; 50-50 pool5 17.6, fc7 17.1.

Args: runlocal, net (pretrained|ft|fcft|fiftyfifty), layer (pool5|fc6|fc7),
ablation (unroll|sp-max|bin|sm-bn-lc|...), bbox_reg (flag: also report
with box regression), voc (devkit|tfds|demo),
devkit_dir, tfds_data_dir, data_dir (demo cache root), pretrained (an
imported CaffeNet or a pretraining workdir), mean_path, proposals_mat
(R-CNN's precomputed boxes, `{split}` in the path is replaced).
"""

import ml_collections

from cnnjax import config_lib

FINETUNING = config_lib.sibling_config_module(__file__, 'pascal_finetune.py')


def get_config(arg=None):
  """The detection config; see the module docstring."""
  arg = config_lib.parse_arg(
      arg, runlocal=False, net='pretrained', layer='fc7', ablation='unroll',
      bbox_reg=False, voc='devkit', devkit_dir='', tfds_data_dir='',
      data_dir='', pretrained='', mean_path='', proposals_mat='')
  config = ml_collections.ConfigDict()
  config.task = 'detect'
  config.net = arg.net
  config.layer = arg.layer
  config.ablation = arg.ablation
  config.runlocal = arg.runlocal
  config.data, config.nets = FINETUNING.voc_experiment(arg, (arg.net,))

  config.proposals = ml_collections.ConfigDict(dict(
      trainval_mat='', test_mat='', num_workers=2))
  if arg.proposals_mat:
    config.proposals.trainval_mat = arg.proposals_mat.format(split='trainval')
    config.proposals.test_mat = arg.proposals_mat.format(split='test')

  # Box regression reads pool5 whatever layer the SVMs use.
  layers = (arg.layer,) + (('pool5',) if arg.bbox_reg and arg.layer != 'pool5'
                           else ())
  config.extract = ml_collections.ConfigDict(dict(
      layers=layers, batch_size=256, encoding='float32'))
  config.svm = ml_collections.ConfigDict(dict(
      C=1e-3, pos_weight=2.0, bias_scale=10.0, tol=0.1, target_norm=20.0,
      norm_images=200, norm_boxes_per_image=200, seed=0))
  config.mining = ml_collections.ConfigDict(dict(
      hard_threshold=-1.0001, evict_threshold=-1.2, retrain_limit=2000))
  config.test = ml_collections.ConfigDict(dict(top_k=100, nms_threshold=0.3))
  config.bbox_reg = ml_collections.ConfigDict(dict(
      enabled=arg.bbox_reg, min_overlap=0.6, ridge_lambda=1000.0))

  if arg.runlocal:
    # Extract every detection layer once; reruns with another layer reuse it.
    config.extract.layers = ('pool5', 'fc6', 'fc7')
    config.extract.batch_size = 64
  return config
