r"""CaffeNet pretraining on ILSVRC-2012 (SPEC 2): the study's "Alex-Net".

Serves every table of the study (the pretrained net, "no FT") and, through
its snapshots, the training-dynamics analysis (seeds Table 4.1, fig 4-1:
snapshots 5K 15K 25K 35K 45K 50K 95K 105K 310K are kept forever).

Full run: 310K iterations of batch 256, base_lr 0.01 divided by 10 every
100K, momentum 0.9, weight decay 0.0005, 256x256 images (aspect ignored),
random 227 crops + mirror; validation top-1/top-5 on the centre crop every
10K steps. Needs ILSVRC-2012 prepared for TFDS (a missing dataset fails at
once with the steps):

  python -m cnnjax.main --config configs/imagenet_caffenet.py \
      --workdir ~/runs/imagenet_caffenet

Expected: val top-1 ~57% / top-5 ~80% at 310K (Caffe's bvlc_reference_caffenet:
57.4% / 80.4%, centre crop). A killed run resumes from its workdir; rerun
with `--config.total_steps=...` larger to continue a finished one.

Demo (`:runlocal`): the generated 48-class demo set (64 px images resized
to 112, random 99 px crops + mirror: pool5 is 2x2, so the spatial analyses
have locations to work on), width 0.25, batch 64, 800 steps, lr 0.001
dropped 10x at step 600, no dropout, Caffe's Xavier filler for the hidden
layers (Caffe's Gaussian init leaves a net this narrow at chance for the
whole demo: see `cnnjax.train.xavier_kernels`), snapshots at the 310K
schedule's iterations scaled to 800 steps:

  python -m cnnjax.main --config configs/imagenet_caffenet.py:runlocal \
      --workdir /tmp/imagenet_caffenet_demo

The demo finetuning configs train it on first use into
`<data_dir>/demo_pretrain_<width>_<size>_<steps>_<recipe digest>` and reuse
it. Measured on the shared 2-core CPU (load ~5, 6.7 CPU-minutes, 10 min
wall): demo val top-1 46.7%, top-5 83.7% (chance 2.1% / 10.4%); the same
recipe at 64 px reaches 27%.

Args (`:key=value,flag`): runlocal, data_dir (TFDS data dir, or the demo
cache root; '' = default), total_steps (0 = the default of the mode).
"""

import os

import ml_collections

from cnnjax import config_lib
from cnnjax import optim
from cnnjax import train
from cnnjax.data import synthetic

# Iterations whose snapshots the study analyses (seeds chapter 4).
SNAPSHOTS = (5_000, 15_000, 25_000, 35_000, 45_000, 50_000, 95_000, 105_000,
             310_000)
TOTAL_STEPS = 310_000
STEPSIZE = 100_000
DEMO_TOTAL_STEPS = 800
DEMO_WIDTH = 0.25
DEMO_RESIZE = 112  # The 64 px demo images upsampled: pool5 is 2x2 at 99.
DEMO_CROP = 99


def scaled(step: int, total_steps: int) -> int:
  """A step of the 310K schedule mapped onto a run of `total_steps`."""
  return max(1, round(step * total_steps / TOTAL_STEPS))


def get_config(arg=None):
  """The pretraining config; see the module docstring."""
  arg = config_lib.parse_arg(arg, runlocal=False, data_dir='', total_steps=0)
  config = ml_collections.ConfigDict()
  config.task = 'train'
  config.seed = 0
  config.total_steps = arg.total_steps or (
      DEMO_TOTAL_STEPS if arg.runlocal else TOTAL_STEPS)

  config.model = ml_collections.ConfigDict(dict(
      num_classes=1000, width=1.0, dropout_rate=0.5))
  config.input = ml_collections.ConfigDict(dict(
      kind='classification', dataset='imagenet2012', data_dir=arg.data_dir,
      split='train', batch_size=256, resize=256, image_size=227,
      mean_path='', demo=dict(num_classes=48, per_class=100, image_size=64)))
  config.eval = ml_collections.ConfigDict(dict(split='val', batch_size=256))
  config.eval_every = 10_000

  config.optim = ml_collections.ConfigDict(dict(
      base_lr=0.01, gamma=0.1, stepsize=STEPSIZE, momentum=0.9,
      weight_decay=5e-4, rules=optim.DEFAULT_RULES))
  config.init_from = ''
  config.init_step = ml_collections.config_dict.placeholder(int)
  config.init_drop = ''
  config.init_filler = 'gaussian'
  config.init_pretrain = None

  config.checkpoint_every = 5_000
  config.keep_steps = SNAPSHOTS
  config.log_every = 100
  config.tensorboard = False  # True: TensorBoard events too ([tensorboard])

  if arg.runlocal:
    config.model.update(num_classes=config.input.demo.num_classes,
                        width=DEMO_WIDTH, dropout_rate=0.0)
    config.input.update(dataset='demo', batch_size=64, resize=DEMO_RESIZE,
                        image_size=DEMO_CROP)
    config.eval.batch_size = 64
    # Caffe's Gaussian init does not leave the chance plateau at this width
    # within a demo's steps (see train.xavier_kernels); Caffe's Xavier
    # filler at lr 0.001 does.
    config.init_filler = 'xavier'
    total = config.total_steps
    config.optim.update(base_lr=0.001, stepsize=total * 3 // 4)
    config.keep_steps = tuple(sorted({scaled(s, total) for s in SNAPSHOTS}))
    config.checkpoint_every = 100
    config.eval_every = total // 4
    config.log_every = 20
  return config


def demo_run(data_dir: str = '') -> tuple[str, ml_collections.ConfigDict]:
  """(workdir, config) of the cached demo pretraining the demo finetunings
  start from: `<data_dir>/demo_pretrain_...`, trained on first use."""
  config = get_config(f'runlocal,data_dir={data_dir}' if data_dir else
                      'runlocal')
  # The recipe's fingerprint in the name: a changed recipe trains anew.
  name = (f'demo_pretrain_w{config.model.width:g}_{config.input.image_size}px_'
          f'{config.total_steps}steps_{train.recipe_fingerprint(config)}')
  return os.path.join(data_dir or synthetic.default_data_dir(), name), config
