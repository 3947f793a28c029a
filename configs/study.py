r"""The whole study in one command: every seed table and figure, then the report.

Reproduces seeds Tables 2.1-2.4, 3.1, 4.1, 4.2, 5.1, 5.2 and figs 2-1, 2-2,
3-1, 3-2, 3-4, 3-5, 4-1 plus the CKA figure (beyond the paper) by running the
experiment configs below in one workdir, in dependency order; each step is
the config file's own experiment, built with the args given here, so the
nets (`<workdir>/nets/`), proposals and feature stores (`<workdir>/features/`)
are computed once and shared. The study records each finished step in
`<workdir>/study/done/<step>.json` (with the fingerprint of its config): an
interrupted study rerun with the same command redoes only the unfinished
steps (and the unfinished part of those, from their own caches). At the end
it writes `<workdir>/report/index.md`: every table with our values beside the
paper's, every figure beside what the seed's figure shows, and what is
missing with the command that produces it.

  step              experiment (config file)                 fills
  pretrain          configs/imagenet_caffenet.py (snapshots) fig 4-1, Table 4.1
  net_ft, net_fcft, configs/pascal_finetune.py (FT, FC-FT,   Tables 2.1-2.4, 4.2
  net_fiftyfifty      50-50 nets, trained as cnnjax.nets does)
  sun397_pretrained configs/sun397_probe.py (SVMs on fc7)     Table 2.2 (SUN)
  sun397_ft/_fcft   configs/sun397_finetune.py (test top-1)  Table 2.2 (SUN)
  gtbox_cls         configs/gtbox_cls.py                     Table 2.4
  analyses_<name>   configs/analyses.py:which=<name>         Tables 2.1, 3.1,
                                                             figs 2-1 .. 4-1, CKA
  pascal_cls_ablations, pascal_cls_snapshots
                    configs/pascal_cls.py                    Tables 5.1, 4.1
  detect_<net>_<layer>[_<ablation>]
                    configs/pascal_det.py                    Tables 2.2, 2.3,
                                                             4.2, 5.2

Full scale (GPU; VOC2007, SUN-397 and ImageNet prepared as the README says;
`pretrained` a pretraining workdir of configs/imagenet_caffenet.py, which
keeps the snapshots of Table 4.1 / fig 4-1 / the 50-50 net, or add `pretrain`
to train it there first; imported Caffe weights serve every step but those):

  python -m cnnjax.main --config configs/study.py:devkit_dir=~/data/VOCdevkit,\
pretrained=~/runs/imagenet_caffenet,sun397_dir=~/tensorflow_datasets \
      --workdir ~/runs/study

Expected: the seeds' numbers (cnnjax/reporting/paper_numbers.csv, shown in
the report), e.g. detection fc7 mAP 45.5 / 54.1 / 53.3 (pretrained / FT /
FC-FT), GT-box fc7 84.0 / 87.1, PASCAL-CLS fc7 73.6. Runtime (one GPU, an
estimate, not measured here): pretraining ~3 days, each finetuning 5-8 h,
detection ~2 h of extraction per net plus ~1 h of SVM training per cell,
the classification and analysis steps ~1 h each; ~6 days in all.

Demo (`:runlocal`): the generated VOC-like set (300 + 300 images) and
classification sets, the demo pretraining (cached under ~/.cache/cnnjax) and
its finetunings, everything at the demo input size:

  python -m cnnjax.main --config configs/study.py:runlocal \
      --workdir /tmp/study_demo

Every detection cell runs at demo scale too (FC-FT and 50-50 nets
included); `det_grid=reduced` keeps the pretrained and FT nets only. The
report states that demo numbers are not comparable with the paper's.
Measured (idle 2-core CPU, nothing cached: demo data generated, demo
pretraining trained, 800-step finetunings), every detection cell: 11.2 min
wall, 18 CPU-minutes; per step pretrain 80 s (data generation included),
net_ft 95 s (selective search on the 600 demo images included), net_fcft
36 s, net_fiftyfifty 64 s, sun397_pretrained 7 s, sun397_ft 28 s,
sun397_fcft 14 s, gtbox_cls 12 s, analyses 24 s in all,
pascal_cls_ablations 12 s, pascal_cls_snapshots 8 s, the first detection
cell of a net ~1 min (its proposal features), every other ~10 s. Its
report: every table and figure complete. A rerun of a finished study:
seconds.

Select steps with `only=` / `skip=` (`a+b`): a step name, a group (`net`,
`sun397`, `analyses`, `pascal_cls`, `detect`) or a product (`table2.3`,
`fig3-1`, `cka`); e.g. `only=table2.4` runs what Table 2.4 needs.

Args: runlocal, only, skip, det_grid (full|reduced; reduced: detection
with the pretrained and FT nets only), keep_going (a failed step is
recorded and the study goes on; the run fails at the end), pretrain
(train `pretrained` first at full scale), voc, devkit_dir, tfds_data_dir,
data_dir (demo cache root), pretrained, imagenet_dir (TFDS data dir of
imagenet2012), sun397_dir (TFDS data dir of sun397), mean_path,
proposals_mat.
"""

import os

import ml_collections

from cnnjax import config_lib

# (net, layer, ablation) of every detection cell, and the tables it fills.
DETECTION_CELLS = (
    ('pretrained', 'pool5', 'unroll', ('table2.3',)),
    ('pretrained', 'fc7', 'unroll', ('table2.2', 'table2.3')),
    ('ft', 'pool5', 'unroll', ('table2.3', 'table4.2', 'table5.2')),
    ('ft', 'fc6', 'unroll', ('table2.3',)),
    ('ft', 'fc7', 'unroll', ('table2.2', 'table2.3', 'table4.2')),
    ('ft', 'pool5', 'sp-max', ('table5.2',)),
    ('ft', 'pool5', 'bin', ('table5.2',)),
    ('fcft', 'fc6', 'unroll', ('table2.3',)),
    ('fcft', 'fc7', 'unroll', ('table2.2', 'table2.3')),
    ('fiftyfifty', 'pool5', 'unroll', ('table4.2',)),
    ('fiftyfifty', 'fc7', 'unroll', ('table4.2',)),
)
# det_grid=reduced: the nets whose proposal features are extracted.
REDUCED_GRID_NETS = ('pretrained', 'ft')
DETECTION_LAYERS = ('pool5', 'fc6', 'fc7')
ANALYSES = (('entropy', ('table2.1', 'fig2-1', 'fig2-2')),
            ('selectivity', ('fig3-1', 'fig3-2')),
            ('subsets', ('table3.1', 'fig3-4', 'fig3-5')),
            ('similarity', ('cka',)),
            ('dynamics', ('fig4-1',)))
FINETUNED = ('ft', 'fcft', 'fiftyfifty')
# Seconds per step, for the ETA: measured demo figures on the shared 2-core
# CPU, and one-GPU estimates at full scale.
DEMO_SECONDS = {'pretrain': 80, 'net': 65, 'sun397': 25, 'sun397_probe': 7,
                'gtbox_cls': 12, 'analyses': 5, 'pascal_cls': 10,
                'detect_first': 60, 'detect': 10}
FULL_SECONDS = {'pretrain': 260_000, 'net': 25_000, 'sun397': 12_000,
                'sun397_probe': 1_800, 'gtbox_cls': 3_600, 'analyses': 3_600,
                'pascal_cls': 3_600, 'detect_first': 10_800, 'detect': 3_600}
PRETRAINING = config_lib.sibling_config_module(__file__,
                                               'imagenet_caffenet.py')


def _step(task, config, *, produces=(), workdir='', seconds=0, what=''):
  """One step: `task` (a cnnjax.tasks name, or the study's 'net') run on
  `config` in `workdir` (relative to the study's workdir, or absolute)."""
  return ml_collections.ConfigDict(dict(
      task=task, config=config, produces=tuple(produces), workdir=workdir,
      seconds=seconds, what=what))


def _args(**values) -> str:
  """A config arg string `k=v,...` (bools as bare flags)."""
  return ','.join(key if value is True else f'{key}={value}'
                  for key, value in values.items() if value is not False)


def get_config(arg=None):
  """The study config; see the module docstring."""
  raw = arg or ''
  arg = config_lib.parse_arg(
      arg, runlocal=False, only=(), skip=(), det_grid='', keep_going=True,
      pretrain=False, voc='devkit', devkit_dir='', tfds_data_dir='',
      data_dir='', pretrained='', imagenet_dir='', sun397_dir='',
      mean_path='', proposals_mat='')
  if not arg.runlocal and not arg.pretrained:
    raise ValueError('configs/study.py: full scale needs pretrained=<a '
                     'pretraining workdir or imported CaffeNet> (or runlocal)')
  det_grid = arg.det_grid or 'full'
  if det_grid not in ('reduced', 'full'):
    raise ValueError(f'det_grid={det_grid!r}; valid: reduced, full')
  seconds = DEMO_SECONDS if arg.runlocal else FULL_SECONDS
  config = ml_collections.ConfigDict()
  config.task = 'study'
  config.runlocal = arg.runlocal
  config.only = arg.only
  config.skip = arg.skip
  config.keep_going = arg.keep_going
  config.det_grid = det_grid
  # The study's own args (without the selection), for the report's commands.
  config.args = ','.join(item for item in raw.split(',')
                         if item and not item.startswith(('only=', 'skip=')))

  voc = _args(runlocal=arg.runlocal, voc=arg.voc, devkit_dir=arg.devkit_dir,
              tfds_data_dir=arg.tfds_data_dir, data_dir=arg.data_dir,
              pretrained=arg.pretrained, mean_path=arg.mean_path,
              proposals_mat=arg.proposals_mat)

  def load(name, extra):
    return config_lib.load_sibling_config(__file__, name, f'{extra},{voc}')

  steps = {}
  if arg.runlocal:
    pretrain_dir, pretrain = PRETRAINING.demo_run(arg.data_dir)
    steps['pretrain'] = _step('train', pretrain, workdir=pretrain_dir,
                              produces=('fig4-1', 'table4.1'),
                              seconds=seconds['pretrain'],
                              what='demo pretraining with snapshots')
  elif arg.pretrain:
    steps['pretrain'] = _step(
        'train', PRETRAINING.get_config(f'data_dir={arg.imagenet_dir}'),
        workdir=arg.pretrained, produces=('fig4-1', 'table4.1'),
        seconds=seconds['pretrain'], what='ImageNet pretraining, snapshots')

  cells = [cell for cell in DETECTION_CELLS
           if det_grid == 'full' or cell[0] in REDUCED_GRID_NETS]
  # FT and FC-FT serve the classification and analyses too; 50-50 only
  # detection.
  used = {'ft', 'fcft'} | {cell[0] for cell in cells}
  for mode in (m for m in FINETUNED if m in used):
    steps[f'net_{mode}'] = _step(
        'net', load('pascal_det.py', f'net={mode}'), seconds=seconds['net'],
        what=f'{mode} finetuning on VOC07 windows')
  steps['sun397_pretrained'] = _step(
      'classify', config_lib.load_sibling_config(
          __file__, 'sun397_probe.py',
          _args(runlocal=arg.runlocal, pretrained=arg.pretrained,
                data_dir=arg.data_dir if arg.runlocal else arg.sun397_dir,
                mean_path=arg.mean_path)),
      workdir=os.path.join('sun397', 'pretrained'), produces=('table2.2',),
      seconds=seconds['sun397_probe'],
      what='SUN-397 linear SVMs on the pretrained fc7')
  for mode in ('ft', 'fcft'):
    sun = (f'mode={mode},runlocal,data_dir={arg.data_dir}' if arg.runlocal
           else f'mode={mode},init_from={arg.pretrained},'
           f'data_dir={arg.sun397_dir},mean_path={arg.mean_path}')
    steps[f'sun397_{mode}'] = _step(
        'train', config_lib.load_sibling_config(
            __file__, 'sun397_finetune.py', sun),
        workdir=os.path.join('sun397', mode), produces=('table2.2',),
        seconds=seconds['sun397'], what=f'SUN-397 {mode} finetuning')

  steps['gtbox_cls'] = _step('classify', load('gtbox_cls.py', 'net=all'),
                             produces=('table2.4',),
                             seconds=seconds['gtbox_cls'],
                             what='GT-box classification per layer and net')
  for which, produces in ANALYSES:
    steps[f'analyses_{which}'] = _step(
        'analyze', load('analyses.py', f'which={which}'), produces=produces,
        seconds=seconds['analyses'], what=f'{which} analysis')
  steps['pascal_cls_ablations'] = _step(
      'classify', load('pascal_cls.py', 'ablations=all'),
      produces=('table5.1',), seconds=seconds['pascal_cls'],
      what='PASCAL-CLS per layer and ablation')
  steps['pascal_cls_snapshots'] = _step(
      'classify', load('pascal_cls.py', 'snapshots'), produces=('table4.1',),
      seconds=seconds['pascal_cls'],
      what='PASCAL-CLS per layer and pretraining snapshot')

  extracted = set()
  for net, layer, ablation, produces in cells:
    det = load('pascal_det.py', f'net={net},layer={layer},ablation={ablation}')
    if not arg.runlocal:
      # One proposal store per net holds every layer its cells need (a store
      # cannot gain layers later, and one per layer would extract again).
      det.extract.layers = tuple(
          l for l in DETECTION_LAYERS
          if any(c[0] == net and c[1] == l for c in cells))
    name = f'detect_{net}_{layer}' + (
        '' if ablation == 'unroll' else '_' + ablation.replace('-', ''))
    first = net not in extracted
    extracted.add(net)
    steps[name] = _step(
        'detect', det, produces=produces,
        seconds=seconds['detect_first' if first else 'detect'],
        what=f'R-CNN detection, {net} {layer} {ablation}')

  config.order = tuple(steps)
  config.steps = ml_collections.ConfigDict(steps)
  config.demo = _demo_facts(steps) if arg.runlocal else None
  return config


def _demo_facts(steps) -> ml_collections.ConfigDict:
  """What makes demo numbers incomparable with the paper's, for the report."""
  pretrain = steps['pretrain'].config
  finetune = steps['net_ft'].config.nets.finetune['ft']
  data = steps['gtbox_cls'].config.data
  return ml_collections.ConfigDict(dict(
      width=pretrain.model.width,
      pretrain_steps=pretrain.total_steps,
      pretrain_classes=pretrain.input.demo.num_classes,
      pretrain_images=(pretrain.input.demo.num_classes *
                       pretrain.input.demo.per_class),
      pretrain_image_size=pretrain.input.demo.image_size,
      input_size=finetune.input.image_size,
      finetune_steps=finetune.total_steps,
      sun397_steps=steps['sun397_ft'].config.total_steps,
      voc_trainval=data.demo_trainval, voc_test=data.demo_test))
