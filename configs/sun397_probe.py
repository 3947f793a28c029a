r"""SUN-397 with the pretrained net: linear SVMs on fc7, seeds Table 2.2.

The pretrained cell of Table 2.2's SUN-397 columns (FT and FC-FT:
configs/sun397_finetune.py). The pretrained net has no SUN-397 classifier,
so, as DeCAF and the seeds did, its fc7 features of the study's SUN-397
train split (50% of every class) -> scaled to mean norm 20 on train -> 397
one-vs-rest linear SVMs in one solve (SPEC 4 solver and values, as
PASCAL-CLS) -> each test image (the 40% split) gets the class of its
highest score -> top-1. Same images, split file and preprocessing (resize,
centre crop, the finetuning's mean) as the finetuned nets' test evaluation,
so the three cells compare like with like. Runs as the `classify` task
(eval 'sun397', cnnjax/classify.py); writes `<workdir>/summary.json`.

  python -m cnnjax.main --config configs/sun397_probe.py:\
pretrained=~/runs/imagenet_caffenet,data_dir=~/tensorflow_datasets \
      --workdir ~/runs/sun397_pretrained

Needs `sun397/tfds` prepared for TFDS and a pretrained CaffeNet (an imported
one or a pretraining workdir); either missing fails at once with the steps.
Expected (seeds Table 2.2): 53.1% (FT 56.8%, FC-FT 56.2%). Runtime: fc7 of
~54K train and ~43K test images, then one solve of 397 SVMs over 54K x 4096
features (about 1.6 GB of features in memory), an estimated half hour on one
GPU (not measured here).

Demo (`:runlocal`): the demo finetunings' stand-in set (24 classes, 60 train
/ 48 test images per class) and the cached demo pretraining (trained first
if absent):

  python -m cnnjax.main --config configs/sun397_probe.py:runlocal \
      --workdir /tmp/sun397_pretrained_demo

Measured (shared 2-core CPU, demo pretraining cached): test top-1 52.5%
(mean per class 52.5%; chance 4.2%; FT 66.9%, FC-FT 60.1%) in 5 s as a
study step, 13 s alone the first time (process start and the generation of
the demo test split included). A rerun: the cached summary.

Args: runlocal, pretrained (required unless runlocal), data_dir (TFDS data
dir, or the demo cache root), mean_path (as configs/sun397_finetune.py),
layer (default fc7).
"""

import ml_collections

from cnnjax import classify
from cnnjax import config_lib
from cnnjax import nets as nets_lib

FINETUNING = config_lib.sibling_config_module(__file__, 'sun397_finetune.py')


def get_config(arg=None):
  """The SUN-397 probe config; see the module docstring."""
  arg = config_lib.parse_arg(arg, runlocal=False, pretrained='', data_dir='',
                             mean_path='', layer='fc7')
  finetune = FINETUNING.get_config(
      f'runlocal,data_dir={arg.data_dir}' if arg.runlocal
      else f'init_from={arg.pretrained},data_dir={arg.data_dir},'
      f'mean_path={arg.mean_path}')
  config = ml_collections.ConfigDict()
  config.task = 'classify'
  config.eval = 'sun397'
  config.layer = arg.layer
  # The finetuning's data and preprocessing: the same test images, fed alike.
  config.input = finetune.input
  config.nets = nets_lib.nets_config(
      pretrained=finetune.init_from, pretrain=finetune.init_pretrain,
      input_size=finetune.input.image_size)
  config.extract = config_lib.parse_arg(
      '', batch_size=64 if arg.runlocal else 256)
  # SPEC 4 (R-CNN's values).
  config.svm = ml_collections.ConfigDict(classify.SvmSettings()._asdict())
  return config
