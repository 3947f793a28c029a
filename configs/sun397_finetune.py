r"""Finetuning CaffeNet on SUN-397 scene classification (SPEC 2).

Serves the FT and FC-FT SUN-397 cells of seeds Table 2.2 (the pretrained
net's: configs/sun397_probe.py). The study's own split: 50% train / 10% val
/ 40% test of every class, fixed seed, recorded as `sun397_split.json` in
the workdir.
A new 397-way fc8 (lr_mult 10/20), base_lr 0.001 divided by 10 every 20K,
40K iterations of batch 128, 256x256 images, random 227 crops + mirror.

Modes (`:mode=`): ft (every layer trains) or fcft (conv1..conv5 frozen, the
backward pass stops at pool5).

  python -m cnnjax.main --config configs/sun397_finetune.py:mode=fcft,\
init_from=~/runs/imagenet_caffenet --workdir ~/runs/sun397_fcft

Needs `sun397/tfds` prepared for TFDS (a missing dataset fails at once with
the steps). Val top-1 is logged every 5K steps; after the last step the test
split is evaluated once (`test_top1` in metrics.jsonl: the Table 2.2 value;
a run finished before it was recorded is evaluated when run again). Expected
(seeds Table 2.2, test accuracy): FT 56.8%, FC-FT 56.2% (pretrained net:
53.1%).

Demo (`:runlocal`, either mode): a stand-in "new dataset" generated like the
demo pretraining set but with another seed and 24 of its classes (new images
and a new 24-way head; 60 train / 12 val / 48 test images per class, the
study's 50/10/40), from the cached demo pretraining of
configs/imagenet_caffenet.py:runlocal (trained first if absent), same
width, crops, filler and dropout, batch 64, 400 steps at the pretraining's
lr (0.001, dropped 10x at 300):

  python -m cnnjax.main --config configs/sun397_finetune.py:runlocal,mode=ft \
      --workdir /tmp/sun397_ft_demo

Measured (study steps on the shared 2-core CPU, load ~2.5, demo pretraining
cached), chance 4.2%: FT test top-1 66.9% (top-5 94.5%; val 64.2%) in 59
s; FC-FT 60.1% (top-5 92.5%; val 59.7%) in 30 s; the pretrained net's
linear SVMs (configs/sun397_probe.py) 52.5%.

Args: mode, runlocal, init_from (required unless runlocal), init_step (-1 =
latest), data_dir (TFDS data dir, or the demo cache root), mean_path
(Caffe's mean image, e.g. the imported weights' mean.npy; '' = per-channel
means), total_steps (0 = the default).
"""


import ml_collections

from cnnjax import config_lib
from cnnjax import optim

CONV_LAYERS = ('conv1', 'conv2', 'conv3', 'conv4', 'conv5')
MODES = ('ft', 'fcft')
PRETRAINING = config_lib.sibling_config_module(__file__,
                                                  'imagenet_caffenet.py')


def get_config(arg=None):
  """The finetuning config of `mode`; see the module docstring."""
  arg = config_lib.parse_arg(arg, mode='ft', runlocal=False, init_from='',
                             init_step=-1, data_dir='', mean_path='',
                             total_steps=0)
  if arg.mode not in MODES:
    raise ValueError(f'mode={arg.mode!r}; valid: {", ".join(MODES)}')
  config = ml_collections.ConfigDict()
  config.task = 'train'
  config.seed = 0
  config.total_steps = arg.total_steps or 40_000

  config.model = ml_collections.ConfigDict(dict(
      num_classes=397, width=1.0, dropout_rate=0.5))
  config.input = ml_collections.ConfigDict(dict(
      kind='classification', dataset='sun397', data_dir=arg.data_dir,
      split='train', batch_size=128, resize=256, image_size=227,
      mean_path=arg.mean_path,
      demo=dict(num_classes=24, per_class=60, image_size=64, seed=1)))
  config.eval = ml_collections.ConfigDict(dict(split='val', final_split='test',
                                               batch_size=128))
  config.eval_every = 5_000

  frozen = optim.freeze_rules(CONV_LAYERS) if arg.mode == 'fcft' else ()
  config.optim = ml_collections.ConfigDict(dict(
      base_lr=0.001, gamma=0.1, stepsize=20_000, momentum=0.9,
      weight_decay=5e-4,
      rules=frozen + optim.new_head_rules('fc8') + optim.DEFAULT_RULES))
  config.init_from = arg.init_from
  config.init_step = ml_collections.config_dict.placeholder(int)
  if arg.init_step >= 0:
    config.init_step = arg.init_step
  config.init_drop = '^fc8/'
  config.init_filler = 'gaussian'
  config.init_pretrain = None

  config.checkpoint_every = 5_000
  config.keep_steps = ()
  config.log_every = 100
  config.tensorboard = False  # True: TensorBoard events too ([tensorboard])

  if arg.runlocal:
    pretrain_dir, pretrain = PRETRAINING.demo_run(arg.data_dir)
    if not arg.init_from:
      config.init_from = pretrain_dir
      config.init_pretrain = pretrain
    config.model.update(num_classes=config.input.demo.num_classes,
                        width=pretrain.model.width,
                        dropout_rate=pretrain.model.dropout_rate)
    config.init_filler = pretrain.init_filler
    config.input.update(dataset='demo', batch_size=64,
                        resize=pretrain.input.resize,
                        image_size=pretrain.input.image_size)
    config.eval.batch_size = 64
    config.total_steps = arg.total_steps or 400
    # The demo pretraining already runs at a tenth of the study's lr (Xavier
    # filler): finetuning keeps its lr, dropped at 3/4.
    config.optim.update(base_lr=pretrain.optim.base_lr,
                        stepsize=config.total_steps * 3 // 4)
    config.checkpoint_every = 100
    config.eval_every = 200
    config.log_every = 20
  return config
