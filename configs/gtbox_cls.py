r"""VOC 2007 GT-box classification per layer and net: seeds Table 2.4.

GT-box classification (SPEC 5): every VOC07 GT box (difficult kept) warped
as in R-CNN is one example labelled by its class -> features of a layer ->
scaled to mean norm 20 on trainval -> 20 one-vs-rest linear SVMs (SPEC 4
solver, no mining) -> 11-point AP per class on the test boxes -> mAP. Run
for the pretrained net and FT at every study layer, and FC-FT at fc6/fc7
(its conv layers are the pretrained net's, frozen). Same task, caching and
outputs as configs/pascal_cls.py (cnnjax/classify.py); the finetuned nets
and the GT-box features are shared with the detection and analysis runs of
the same workdir.

Full scale (VOC2007 and CaffeNet weights prepared; a missing one fails at
once with the steps to prepare it; FT and FC-FT are finetuned first unless
the workdir has them):

  python -m cnnjax.main --config configs/gtbox_cls.py:\
devkit_dir=~/data/VOCdevkit,pretrained=~/weights/caffenet \
      --workdir ~/runs/voc07

Expected (seeds Table 2.4, VOC07 test GT-box mAP %):

  layer   pretrained  FT     FC-FT
  pool1   43.2        43.2
  pool2   67.1        67.7
  conv3   73.3        73.7
  conv4   75.5        77.8
  pool5   79.1        82.2
  fc6     83.4        85.4   81.96
  fc7     84.0        87.1   83.44

FT above the pretrained net from conv4 up; FC-FT slightly below it. Runtime:
about 15K trainval and 15K test boxes per net to extract, then one batched
SVM solve per cell, an estimated tens of minutes per net on one GPU plus the
two finetuning runs (not measured here).

Demo (`:runlocal`): the demo VOC (300 + 300 images, ~2.4 boxes each) and the
demo nets (pretraining, then FT and FC-FT finetuning, each trained once and
reused):

  python -m cnnjax.main --config configs/gtbox_cls.py:runlocal \
      --workdir /tmp/voc07_demo

Expected at demo scale: mAP far above chance (about 5% for 20 classes) at
every layer; the seeds' FT gain is not expected from the short demo
finetuning. Measured (2 shared CPU cores, demo pretraining cached; FT and
FC-FT finetuned in the run): 10 min, of which the classification is ~2 min;
mAP pretrained / FT / FC-FT: pool1 58.4 / 58.1, pool2 48.3 / 48.5, conv3
45.3 / 45.4, conv4 42.7 / 43.8, pool5 30.5 / 31.7, fc6 34.3 / 34.8 / 34.3,
fc7 34.5 / 35.4 / 35.0 (on the demo's small objects the low layers win).
A rerun: seconds.

Args: runlocal, net (all = pretrained+ft+fcft | pretrained | ft | fcft),
layers (`pool5+fc7`), ablations (`unroll+bin`), include_difficult, voc,
devkit_dir, tfds_data_dir, data_dir, pretrained, mean_path, proposals_mat
(as in configs/pascal_cls.py).
"""

from cnnjax import config_lib
from cnnjax.models import caffenet


def get_config(arg=None):
  """The GT-box classification config; see the module docstring."""
  arg = config_lib.parse_arg(
      arg, runlocal=False, net='all', layers=caffenet.STUDY_LAYERS,
      ablations=('unroll',), include_difficult=True, voc='devkit',
      devkit_dir='', tfds_data_dir='', data_dir='', pretrained='',
      mean_path='', proposals_mat='')
  passed = dict(net=arg.net, layers='+'.join(arg.layers),
                ablations='+'.join(arg.ablations), voc=arg.voc,
                devkit_dir=arg.devkit_dir, tfds_data_dir=arg.tfds_data_dir,
                data_dir=arg.data_dir, pretrained=arg.pretrained,
                mean_path=arg.mean_path, proposals_mat=arg.proposals_mat,
                runlocal=arg.runlocal)
  config = config_lib.load_sibling_config(
      __file__, 'pascal_cls.py',
      ','.join(f'{key}={value}' for key, value in passed.items()))
  config.eval = 'gtbox'
  config.include_difficult = arg.include_difficult
  # FC-FT's conv layers are the pretrained net's (frozen): fc6/fc7 only.
  config.net_layers = {'fcft': ('fc6', 'fc7')}
  config.paper_table = '2.4'
  return config
