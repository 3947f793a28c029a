r"""The study's analyses, seeds chapters 2-4: Tables 2.1, 3.1; figs 2-1 .. 4-1.

What each `which=` reproduces (SPEC 6; cnnjax/analyze.py):

  entropy      Table 2.1 (percent decrease of MCAuE after finetuning, three
               entropies, every study layer), fig 2-1 (AuE histograms),
               fig 2-2 (MCAuE curves); pretrained, FT and FC-FT nets on the
               VOC07 test GT boxes.
  selectivity  fig 3-1 (pool5 precision curves of the 5 most selective
               filters per class) and fig 3-2 (PR curves of the 5 best
               filters per class by AP); pretrained vs FT.
  subsets      fig 3-4 (GT-box AP vs number of pool5 filters), Table 3.1
               (filters reaching 50% / 90% of the full AP), fig 3-5 (top-50
               filter overlap between classes); pretrained vs FT.
  dynamics     fig 4-1 (conv1 filters of the pretraining snapshots, training
               loss and validation top-1). Table 4.1 is configs/pascal_cls.py.
  similarity   beyond the paper: linear CKA per layer, pretrained vs FT and
               FC-FT, and between consecutive pretraining snapshots.
  all          everything above.

Full scale (VOC2007 and a pretraining workdir of configs/imagenet_caffenet.py
prepared, or imported Caffe weights for everything but dynamics and the
snapshot CKA; a missing one fails at once with the steps to prepare it; FT
and FC-FT are finetuned first unless the workdir has them):

  python -m cnnjax.main --config configs/analyses.py:which=all,\
devkit_dir=~/data/VOCdevkit,pretrained=~/runs/imagenet_caffenet \
      --workdir ~/runs/voc07

Expected (seeds): Table 2.1, percent decrease of MCAuE, small (|x| < 1.2)
for pool1..conv4, 1-6 at pool5, largest at fc6/fc7 (label entropy at 0.1:
fc6 6.52, fc7 5.17; weighted fc7 20.58); Table 3.1 per-class filter counts
of 1-25 (50%) and 10-100 (90%), FT needing slightly fewer; fig 3-5 a matrix
with little overlap off the diagonal; fig 4-1 conv1 filters close to final
by 15K iterations. Runtime: the features of ~15K test (and, for subsets,
~15K trainval) GT boxes per net and the pretraining snapshots' test images
(extraction dominates; shared with configs/gtbox_cls.py and
configs/pascal_cls.py in the same workdir), then minutes per net on one GPU
(not measured here).

Demo (`:runlocal`): the demo VOC (300 + 300 images, ~2.4 boxes each), the
demo pretraining and its FT / FC-FT finetuning (each trained once, reused):

  python -m cnnjax.main --config configs/analyses.py:which=all,runlocal \
      --workdir /tmp/voc07_demo

Expected at demo scale: every table and figure written; the qualitative
signs of the seeds (fc layers most selective, finetuning lowering their
entropy) may or may not show on this data; conv1 filters change visibly
only over the early snapshots. See the README for measured figures.

Args: which, runlocal, nets (entropy and similarity, `pretrained+ft+fcft`),
filter_nets (selectivity and subsets, `pretrained+ft`), snapshots
(pretraining steps for dynamics and similarity, `a+b`; default every
checkpoint of the run), include_difficult, encoding (feature store encoding
for new extractions), voc, devkit_dir, tfds_data_dir, data_dir (demo cache
root), pretrained (a pretraining workdir or imported CaffeNet), mean_path,
proposals_mat (R-CNN's boxes for the finetuning, `{split}` replaced).
"""

import ml_collections

from cnnjax import config_lib
from cnnjax.analysis import entropy
from cnnjax.analysis import selectivity
from cnnjax.analysis import subsets
from cnnjax.models import caffenet

FINETUNING = config_lib.sibling_config_module(__file__, 'pascal_finetune.py')


def get_config(arg=None):
  """The analyses config; see the module docstring."""
  arg = config_lib.parse_arg(
      arg, which='all', runlocal=False, nets=('pretrained', 'ft', 'fcft'),
      filter_nets=('pretrained', 'ft'), snapshots=(), include_difficult=True,
      encoding='float32', voc='devkit', devkit_dir='', tfds_data_dir='',
      data_dir='', pretrained='', mean_path='', proposals_mat='')
  config = config_lib.parse_arg('')
  config.task = 'analyze'
  config.which = arg.which
  config.runlocal = arg.runlocal
  config.include_difficult = arg.include_difficult
  config.snapshots = tuple(int(s) for s in arg.snapshots)

  config.data, config.nets = FINETUNING.voc_experiment(
      arg, arg.nets + arg.filter_nets)

  # Every GT-box and image store holds all study layers, as the
  # classification task's, so the two tasks share their extractions.
  config.extract = config_lib.parse_arg(
      '', layers=caffenet.STUDY_LAYERS, batch_size=64 if arg.runlocal else 256,
      encoding=arg.encoding)
  chunk_elements = entropy.DEFAULT_CHUNK_ELEMENTS
  config.entropy = ml_collections.ConfigDict(dict(
      nets=arg.nets, layers=caffenet.STUDY_LAYERS, methods=entropy.METHODS,
      num_thresholds=100, thresholds='linear',
      fractions=entropy.TABLE_FRACTIONS, curve_points=entropy.CURVE_POINTS,
      chunk_elements=chunk_elements))
  config.selectivity = ml_collections.ConfigDict(dict(
      nets=arg.filter_nets, layer='pool5', num_thresholds=100,
      thresholds='linear', top=selectivity.TOP_FILTERS, max_recall=0.25,
      chunk_elements=chunk_elements))
  config.subsets = ml_collections.ConfigDict(dict(
      nets=arg.filter_nets, layer='pool5', sizes=subsets.SUBSET_SIZES,
      top_overlap=subsets.TOP_OVERLAP, chunk_elements=chunk_elements))
  if arg.runlocal:
    # The seeds' top-50 of 256 pool5 filters, kept a fifth of a narrow net's.
    config.subsets.top_overlap = max(
        1, round(subsets.TOP_OVERLAP * config.nets.pretrain.model.width))
  config.svm = config_lib.parse_arg(
      '', C=1e-3, pos_weight=2.0, bias_scale=10.0, tol=0.1, max_iter=1000,
      seed=0)
  config.similarity = ml_collections.ConfigDict(dict(
      nets=arg.nets, layers=caffenet.STUDY_LAYERS, batch_size=1024,
      snapshots=True))
  return config
