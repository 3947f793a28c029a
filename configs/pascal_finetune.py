r"""R-CNN finetuning of CaffeNet on PASCAL VOC 2007 windows (SPEC 2, 3).

Serves the finetuned nets of the study: FT and FC-FT (seeds Tables 2.1-2.4:
entropy decrease, detection mAP per layer, GT-box classification) and the
50-50 net (Table 4.2). Windows: every GT box and selective-search proposal of
VOC07 trainval, foreground at IoU >= 0.5 (label = class + 1), background
label 0; batches of 128 = 32 foreground + 96 background, mirrored with p 0.5;
a new 21-way fc8 (lr_mult 10/20); base_lr 0.001 divided by 10 every 20K.

Modes (`:mode=`):
  ft          every layer trains; 70K iterations from the 310K ImageNet net.
  fcft        conv1..conv5 frozen (bit-identical; the backward pass stops at
              pool5, about 2x cheaper); 70K iterations from the 310K net.
  fiftyfifty  as ft, from the 50K snapshot of the pretraining run, for 50K
              iterations.

  python -m cnnjax.main --config configs/pascal_finetune.py:mode=ft,\
init_from=~/runs/imagenet_caffenet,devkit_dir=~/data/VOCdevkit \
      --workdir ~/runs/pascal_ft

(`init_from`: the pretraining workdir, or a checkpoint imported from Caffe
with `python -m cnnjax.tools.import_caffe`.) Selective search runs once per
image and is cached in `proposals_dir` (default `<workdir>/proposals`): point
the modes at one folder to share it; `proposals_mat=.../voc_2007_{split}.mat`
reads R-CNN's precomputed boxes instead. Window accuracy on 20 fixed batches
of VOC07 test windows is logged every 10K steps.

Expected (detection mAP of the resulting nets, seeds Tables 2.2, 4.2): fc7
FT 54.1, FC-FT 53.3, 50-50 50.5 (R-CNN's FT fc7: 54.2).

Demo (`:runlocal`, any mode): the generated VOC-like set (300 trainval, 300
test images of 160x120), from the cached demo pretraining of
configs/imagenet_caffenet.py:runlocal (trained first into
`<data_dir>/demo_pretrain_*` when absent; fiftyfifty starts from its scaled
50K snapshot), same width, filler and dropout, 99 px warps with context
round(16 * 99 / 227) = 7, batch 64 (16 + 48), 800 steps at the
pretraining's lr (0.001, dropped 10x at 600):

  python -m cnnjax.main --config configs/pascal_finetune.py:runlocal,mode=fcft \
      --workdir /tmp/pascal_fcft_demo

Window accuracy alone says little here (answering background everywhere
scores 75%); the mean per-class top-1 (chance 1/21 = 4.8%) shows the
learning. Measured on the shared 2-core CPU (load 6-9), test windows:

  mode  steps  top-1   mean per-class top-1   CPU time
  ft    400    77.2%   13.9%                  ~2 min
  ft    800    78.5%   20.5%                  ~3 min
  fcft  400    77.7%   20.3%                  ~1 min

plus selective search on the 600 images once (~2 CPU-minutes). A tenth of
the lr leaves the net answering background; 3x the lr collapses FT onto
background within 200 steps. On the demo, FC-FT learns faster than FT (the
narrow conv layers lose more to the new head's early gradients than they
gain); the study's numbers need the full-size run.

Args: mode, runlocal, init_from (required unless runlocal), init_step (-1 =
the mode's default), voc ('devkit' | 'tfds' | 'demo'; '' = demo under
runlocal, else devkit), devkit_dir (the VOCdevkit folder), data_dir (demo
cache root), proposals_dir, proposals_mat, mean_path (Caffe's mean image,
e.g. the imported weights' mean.npy, as the features are extracted with;
'' = per-channel means), eval_split ('' for no evaluation), total_steps
(0 = the mode's default).
"""


import ml_collections

from cnnjax import config_lib
from cnnjax import nets as nets_lib
from cnnjax import optim
from cnnjax.data import datasets

CONV_LAYERS = ('conv1', 'conv2', 'conv3', 'conv4', 'conv5')
MODES = ('ft', 'fcft', 'fiftyfifty')
DEMO_SIZE = 115


PRETRAINING = config_lib.sibling_config_module(__file__,
                                                  'imagenet_caffenet.py')


def get_config(arg=None):
  """The finetuning config of `mode`; see the module docstring."""
  arg = config_lib.parse_arg(
      arg, mode='ft', runlocal=False, init_from='', init_step=-1, voc='',
      devkit_dir='', data_dir='', proposals_dir='', proposals_mat='',
      mean_path='', eval_split='test', total_steps=0)
  if arg.mode not in MODES:
    raise ValueError(f'mode={arg.mode!r}; valid: {", ".join(MODES)}')
  config = ml_collections.ConfigDict()
  config.task = 'train'
  config.seed = 0
  config.total_steps = arg.total_steps or (
      50_000 if arg.mode == 'fiftyfifty' else 70_000)

  config.model = ml_collections.ConfigDict(dict(
      num_classes=21, width=1.0, dropout_rate=0.5))
  config.data = datasets.data_config(
      voc=arg.voc or ('demo' if arg.runlocal else 'devkit'),
      devkit_dir=arg.devkit_dir, data_dir=arg.data_dir)
  config.input = ml_collections.ConfigDict(dict(
      kind='voc_windows', split='trainval', batch_size=128, fg_fraction=0.25,
      image_size=227, context=16, mean_path=arg.mean_path,
      proposals_dir=arg.proposals_dir, proposals_mat=arg.proposals_mat,
      proposals_workers=2))
  config.eval = ml_collections.ConfigDict(dict(
      split=arg.eval_split, batch_size=128, num_batches=20))
  config.eval_every = 10_000

  frozen = optim.freeze_rules(CONV_LAYERS) if arg.mode == 'fcft' else ()
  config.optim = ml_collections.ConfigDict(dict(
      base_lr=0.001, gamma=0.1, stepsize=20_000, momentum=0.9,
      weight_decay=5e-4,
      rules=frozen + optim.new_head_rules('fc8') + optim.DEFAULT_RULES))
  config.init_from = arg.init_from
  config.init_step = ml_collections.config_dict.placeholder(int)
  if arg.init_step >= 0:
    config.init_step = arg.init_step
  elif arg.mode == 'fiftyfifty':
    config.init_step = 50_000
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
      if arg.mode == 'fiftyfifty':  # The demo's scaled 50K snapshot.
        config.init_step = PRETRAINING.scaled(50_000, pretrain.total_steps)
    config.model.update(width=pretrain.model.width,
                        dropout_rate=pretrain.model.dropout_rate)
    config.init_filler = pretrain.init_filler
    size = pretrain.input.image_size
    config.input.update(batch_size=64, image_size=size,
                        context=round(16 * size / 227))
    config.eval.update(batch_size=64, num_batches=8)
    config.total_steps = arg.total_steps or 800
    # The demo pretraining already runs at a tenth of the study's lr (Xavier
    # filler): finetuning keeps its lr (measured: a tenth of it leaves the
    # net answering background; 10x diverges), dropped at 3/4.
    config.optim.update(base_lr=pretrain.optim.base_lr,
                        stepsize=config.total_steps * 3 // 4)
    config.checkpoint_every = 100
    config.eval_every = 200
    config.log_every = 20
  return config


def voc_experiment(arg: ml_collections.ConfigDict, net_names
                   ) -> tuple[ml_collections.ConfigDict,
                              ml_collections.ConfigDict]:
  """(config.data, config.nets) of an experiment on VOC using `net_names`.

  Detection, classification and the analyses share these blocks: the data
  (the demo under `arg.runlocal`), the pretrained net with its input geometry
  as the finetuning has it, and a finetuning config per finetuned net named.
  `arg` holds runlocal, voc, devkit_dir, tfds_data_dir, data_dir, pretrained,
  mean_path and proposals_mat.
  """
  if arg.runlocal:
    data = datasets.data_config(voc='demo', data_dir=arg.data_dir)
  else:
    data = datasets.data_config(voc=arg.voc, devkit_dir=arg.devkit_dir,
                                tfds_data_dir=arg.tfds_data_dir)
  local = ',runlocal' if arg.runlocal else ''
  finetune = {}
  for mode in sorted(set(net_names) & set(MODES)):
    finetuning = get_config(f'mode={mode},data_dir={arg.data_dir}{local}')
    finetuning.data = data
    if not arg.runlocal:
      finetuning.init_from = arg.pretrained
      # Trained on windows minus the mean its features are extracted with.
      finetuning.input.mean_path = arg.mean_path
    if arg.proposals_mat:
      finetuning.input.proposals_mat = arg.proposals_mat
    finetune[mode] = finetuning
  reference = get_config(f'mode=ft,data_dir={arg.data_dir}{local}')
  nets = nets_lib.nets_config(
      pretrained=reference.init_from if arg.runlocal else arg.pretrained,
      pretrain=reference.init_pretrain if arg.runlocal else None,
      finetune=finetune, input_size=reference.input.image_size,
      mean_path=arg.mean_path)
  return data, nets
