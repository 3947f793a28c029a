r"""PASCAL VOC 2007 image classification per layer: seeds Tables 4.1 and 5.1.

PASCAL-CLS (SPEC 5): each whole image warped as one box -> features of a
layer (optionally ablated, SPEC 6) -> scaled to mean norm 20 on trainval ->
20 one-vs-rest linear SVMs (SPEC 4 solver, no mining) -> VOC07 test 11-point
AP per class (images whose instances are all difficult ignored, in training
too) -> mAP. Runs every (net, layer, ablation) of the config; each is cached
in the workdir, so a rerun with more layers, ablations or nets only computes
what is new (features are shared with the other experiments of the workdir).

Full scale (VOC2007 and CaffeNet weights prepared; a missing one fails at
once with the steps to prepare it):

  # Layer-wise mAP of the pretrained net (Table 5.1's "unroll" column):
  python -m cnnjax.main --config configs/pascal_cls.py:\
devkit_dir=~/data/VOCdevkit,pretrained=~/weights/caffenet \
      --workdir ~/runs/voc07

  # Table 5.1, every ablation:
  python -m cnnjax.main --config configs/pascal_cls.py:ablations=all,\
devkit_dir=~/data/VOCdevkit,pretrained=~/weights/caffenet \
      --workdir ~/runs/voc07

  # Table 4.1, the pretraining snapshots (`pretrained` must be the
  # pretraining workdir of configs/imagenet_caffenet.py, which keeps them):
  python -m cnnjax.main --config configs/pascal_cls.py:snapshots,\
devkit_dir=~/data/VOCdevkit,pretrained=~/runs/imagenet_caffenet \
      --workdir ~/runs/voc07

Expected (seeds, VOC07 test mAP %):

  Table 5.1  layer  unroll sp-shuffle sp-max sp-max-bin  bin
             pool1   25.1    15.0      19.5     9.0     25.4
             pool2   44.9    33.5      40.2      -      43.0
             conv3   50.1    40.4      54.2      -      47.0
             conv4   54.2    45.3      57.0      -      51.3
             pool5   65.6    59.6      62.6    27.2     60.5
             fc6     70.6     -         -        -      71.4
             fc7     73.6     -         -        -      74.1
  Table 4.1  (steps 5K 15K 25K 35K 45K 95K 105K 310K)
             pool1 23.0 .. 25.1, pool5 33.0 53.4 55.0 56.8 57.4 59.2 63.5
             65.6, fc7 30.9 61.3 64.1 65.1 65.8 67.8 71.8 73.2: every layer
             within 80% of its final mAP by 15K, 90% by 45K.
The seeds ran sp-max-bin on pool1 and pool5 only; it is computed here for
every conv layer. Runtime: feature extraction of 9,963 images per net plus
one batched SVM solve per cell, an estimated tens of minutes per net on one
GPU (not measured here).

Demo (`:runlocal`): the embedded demo VOC (300 trainval + 300 test images),
the demo CaffeNet (width 0.25, 64 px input; pretrained on the demo
classification set first if absent):

  python -m cnnjax.main --config configs/pascal_cls.py:runlocal \
      --workdir /tmp/voc07_demo
  python -m cnnjax.main --config configs/pascal_cls.py:runlocal,snapshots \
      --workdir /tmp/voc07_demo

Expected at demo scale: whole 160x120 scenes warped to 64 px carry little
for the weak demo net, so every layer lands only a few points above the
14.8 mAP of constant scores (class frequency ~11%), rising with the snapshot
step. Measured (2 shared CPU cores, demo pretraining cached): `:runlocal`
72 s (extraction included), mAP pool1 17.2 pool2 17.7 conv3 18.6 conv4 18.3
pool5 16.3 fc6 16.9 fc7 17.4; `ablations=all` 92 s more (bin fc6 19.2 / fc7
18.9, sp-max pool5 16.3, sp-shuffle pool1 15.5); `snapshots` 140 s (conv3
14.7 at the scaled 5K step -> 18.6 at the last). A rerun: seconds.

Args: runlocal, net (pretrained|ft|fcft|fiftyfifty|all = pretrained+ft+fcft),
layers (`pool5+fc7`; default the study layers), ablations (`unroll+bin`, or
all = Table 5.1's five), snapshots (flag: Table 4.1), label0 (training use of
images with only difficult instances: ignore|positive|negative), voc
(devkit|tfds|demo), devkit_dir, tfds_data_dir, data_dir (demo cache root),
pretrained (an imported CaffeNet or a pretraining workdir), mean_path,
proposals_mat (R-CNN's boxes for finetuning FT nets, `{split}` replaced).
"""

import ml_collections

from cnnjax import classify
from cnnjax import config_lib
from cnnjax.models import caffenet

ALL_NETS = ('pretrained', 'ft', 'fcft')
# Seeds Table 5.1's columns and Table 4.1's pretraining steps.
TABLE_5_1_ABLATIONS = ('unroll', 'sp-shuffle', 'sp-max', 'sp-max-bin', 'bin')
TABLE_4_1_STEPS = (5_000, 15_000, 25_000, 35_000, 45_000, 95_000, 105_000,
                   310_000)
PRETRAINING = config_lib.sibling_config_module(__file__,
                                                  'imagenet_caffenet.py')
FINETUNING = config_lib.sibling_config_module(__file__, 'pascal_finetune.py')


def get_config(arg=None):
  """The PASCAL-CLS config; see the module docstring."""
  arg = config_lib.parse_arg(
      arg, runlocal=False, net='pretrained', layers=caffenet.STUDY_LAYERS,
      ablations=('unroll',), snapshots=False, label0='ignore', voc='devkit',
      devkit_dir='', tfds_data_dir='', data_dir='', pretrained='',
      mean_path='', proposals_mat='')
  config = config_lib.parse_arg('')
  config.task = 'classify'
  config.eval = 'pascal_cls'
  config.nets_to_run = ALL_NETS if arg.net == 'all' else (arg.net,)
  config.layers = arg.layers
  config.ablations = (TABLE_5_1_ABLATIONS if arg.ablations == ('all',)
                      else arg.ablations)
  config.net_layers = {}
  config.label0 = arg.label0
  config.include_difficult = True
  config.seed = 0
  config.runlocal = arg.runlocal
  # The seeds report PASCAL-CLS of the pretrained net only.
  config.paper_table = '5.1' if config.nets_to_run == ('pretrained',) else ''

  config.data, config.nets = FINETUNING.voc_experiment(arg,
                                                      config.nets_to_run)
  pretrain = config.nets.pretrain

  # Table 4.1: the pretraining snapshots, columns named by the study's steps;
  # the demo pretraining keeps the same steps scaled to its length.
  config.snapshots = ()
  config.snapshot_columns = ()
  if arg.snapshots:
    total = (pretrain.total_steps if arg.runlocal
             else PRETRAINING.TOTAL_STEPS)
    config.snapshots = tuple(PRETRAINING.scaled(s, total)
                             for s in TABLE_4_1_STEPS)
    config.snapshot_columns = tuple(str(s) for s in TABLE_4_1_STEPS)
    config.paper_table = '4.1'

  config.extract = config_lib.parse_arg(
      '', layers=caffenet.STUDY_LAYERS, batch_size=256, encoding='float32')
  config.svm = ml_collections.ConfigDict(classify.SvmSettings()._asdict())
  if arg.runlocal:
    config.extract.batch_size = 64
  return config
