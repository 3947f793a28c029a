"""The analyses' figures (seeds figs 2-1, 2-2, 3-1, 3-2, 3-4, 3-5, 4-1; CKA).

Each function draws one figure from arrays and saves it with
`tables.save_figure` (atomic PNG); none computes anything the analyses do
not hand it. Nets keep one colour everywhere (the seeds: pretrained blue,
finetuned red) and, where layers share a panel, one line style.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

from matplotlib import ticker
import numpy as np

from cnnjax.reporting import tables

NET_COLORS = {'pretrained': 'tab:blue', 'ft': 'tab:red', 'fcft': 'tab:green',
              'fiftyfifty': 'tab:orange'}
# Seeds fig 2-2: dash-dot for the pretrained net, solid for the finetuned.
NET_STYLES = {'pretrained': '-.', 'ft': '-', 'fcft': ':', 'fiftyfifty': '--'}
NET_LABELS = {'pretrained': 'pretrained (Alex-Net)', 'ft': 'FT',
              'fcft': 'FC-FT', 'fiftyfifty': '50-50'}
METHOD_LABELS = {'label': 'label entropy', 'weighted': 'weighted label entropy',
                 'spmax': 'spMax label entropy'}


def _pyplot():
  """matplotlib.pyplot on the file-only Agg backend (no display needed)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def _color(net: str) -> str:
  return NET_COLORS.get(net, 'tab:gray')


def _label(net: str) -> str:
  return NET_LABELS.get(net, net)


def _class_panels(plt, num_classes: int):
  """A 4x5 grid of panels with shared axes, one per class (figs 3-1 .. 3-4).

  Shared axes make the classes comparable at a glance and draw only the
  outer tick labels; fixed margins instead of tight_layout keep drawing 20
  panels fast.
  """
  columns = 5
  rows = math.ceil(num_classes / columns)
  fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.6 * rows),
                           squeeze=False, sharex='all', sharey='all')
  fig.subplots_adjust(left=0.05, right=0.98, bottom=0.07, top=0.9,
                      wspace=0.12, hspace=0.3)
  for ax in axes.flat[num_classes:]:
    ax.set_visible(False)
  return fig, list(axes.flat[:num_classes])


def _log_x(ax) -> None:
  """Log x-axis without minor ticks (hundreds of tick artists per panel)."""
  ax.set_xscale('log')
  ax.xaxis.set_minor_locator(ticker.NullLocator())


def _net_legend(fig, nets: Sequence[str]) -> None:
  from matplotlib.lines import Line2D  # pylint: disable=g-import-not-at-top
  fig.legend([Line2D([], [], color=_color(n)) for n in nets],
             [_label(n) for n in nets], loc='upper right', ncol=len(nets))


def aue_histograms(path: str, aue: Mapping[str, Mapping[str, np.ndarray]], *,
                   title: str = '', bins: int = 30) -> str:
  """Seeds fig 2-1: the distribution of AuE over each layer's filters.

  Args:
    path: the PNG to write.
    aue: net -> layer -> [F] AuE (bits) of the layer's filters.
    title: figure title (e.g. the entropy method).
    bins: histogram bins, shared by the nets within a layer.

  Returns:
    `path`.
  """
  plt = _pyplot()
  nets = list(aue)
  layers = list(next(iter(aue.values())))
  columns = min(4, len(layers))
  rows = math.ceil(len(layers) / columns)
  fig, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 2.9 * rows),
                           squeeze=False)
  for ax in axes.flat[len(layers):]:
    ax.set_visible(False)
  for ax, layer in zip(axes.flat, layers):
    values = np.concatenate([np.asarray(aue[n][layer]) for n in nets])
    edges = np.histogram_bin_edges(values, bins=bins)
    for net in nets:
      # Line styles as fig 2-2's: where nets coincide (FC-FT is the
      # pretrained net below fc6) both stay visible.
      ax.hist(aue[net][layer], bins=edges, histtype='step', lw=1.5,
              color=_color(net), linestyle=NET_STYLES.get(net, '-'),
              label=_label(net))
    ax.set_title(layer, fontsize=10)
    ax.set_xlabel('AuE (bits)')
    ax.set_ylabel('filters')
  axes.flat[0].legend(fontsize=8)
  fig.suptitle(title)
  fig.tight_layout()
  return tables.save_figure(fig, path)


def mcaue_curves(path: str,
                 curves: Mapping[str, Mapping[str, Mapping[str, np.ndarray]]],
                 fractions, *, title: str = '') -> str:
  """Seeds fig 2-2: MCAuE against the fraction of filters, one panel a method.

  Args:
    path: the PNG to write.
    curves: method -> net -> layer -> [P] MCAuE at `fractions`.
    fractions: [P] fractions of the layer's filters (k/30 in the seeds).
    title: figure title.

  Returns:
    `path`. Colour = layer, line style = net (pretrained dash-dot, FT solid).
  """
  plt = _pyplot()
  from matplotlib.lines import Line2D  # pylint: disable=g-import-not-at-top
  methods = list(curves)
  nets = list(next(iter(curves.values())))
  layers = list(next(iter(next(iter(curves.values())).values())))
  palette = plt.get_cmap('viridis')
  colors = {layer: palette(i / max(1, len(layers) - 1))
            for i, layer in enumerate(layers)}
  fig, axes = plt.subplots(len(methods), 1, figsize=(7.5, 3.6 * len(methods)),
                           squeeze=False)
  for ax, method in zip(axes[:, 0], methods):
    for layer in layers:
      for net in nets:
        ax.plot(fractions, curves[method][net][layer], color=colors[layer],
                linestyle=NET_STYLES.get(net, '--'), lw=1.4)
    ax.set_title(METHOD_LABELS.get(method, method), fontsize=10)
    ax.set_xlabel('fraction of filters (most selective first)')
    ax.set_ylabel('MCAuE (bits)')
    ax.set_xlim(0, 1)
    ax.grid(alpha=0.3)
  handles = ([Line2D([], [], color=colors[l]) for l in layers] +
             [Line2D([], [], color='k', linestyle=NET_STYLES.get(n, '--'))
              for n in nets])
  axes[0, 0].legend(handles, layers + [_label(n) for n in nets], fontsize=7,
                    ncol=2, loc='lower right')
  fig.suptitle(title)
  fig.tight_layout()
  return tables.save_figure(fig, path)


def precision_curves(path: str,
                     curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
                     class_names: Sequence[str], *, title: str = '') -> str:
  """Seeds fig 3-1: precision of the most selective filters per class.

  Args:
    path: the PNG to write.
    curves: net -> (examples [C, k, T], precision [C, k, T]): for each class
      its k filters' precision at each threshold, against the number of
      examples scoring at or above it.
    class_names: [C] panel titles.
    title: figure title.

  Returns:
    `path` (x: examples at or above the threshold, log scale).
  """
  plt = _pyplot()
  fig, axes = _class_panels(plt, len(class_names))
  for k, ax in enumerate(axes):
    for net, (examples, precision) in curves.items():
      for count, value in zip(examples[k], precision[k]):
        reached = count > 0
        ax.plot(count[reached], value[reached], color=_color(net), lw=0.9,
                alpha=0.8)
    ax.set_title(class_names[k], fontsize=9)
    ax.grid(alpha=0.3)
  _log_x(axes[0])
  axes[0].set_ylim(0, 1.02)
  for ax in axes[-5:]:
    ax.set_xlabel('examples >= threshold')
  for ax in axes[::5]:
    ax.set_ylabel('precision')
  _net_legend(fig, list(curves))
  fig.suptitle(title)
  return tables.save_figure(fig, path)


def filter_pr_curves(path: str,
                     curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
                     class_names: Sequence[str], *, max_recall: float = 1.0,
                     title: str = '') -> str:
  """Seeds fig 3-2: precision/recall of the best single filters per class.

  Args:
    path: the PNG to write.
    curves: net -> (recall [C, k, N], precision [C, k, N]) along each
      filter's ranking of the examples.
    class_names: [C] panel titles.
    max_recall: the recall axis ends here (the seeds show up to 0.25); the
      curves are cut just past it, so long rankings draw quickly.
    title: figure title.

  Returns:
    `path`.
  """
  plt = _pyplot()
  fig, axes = _class_panels(plt, len(class_names))
  for k, ax in enumerate(axes):
    for net, (recall, precision) in curves.items():
      for r, p in zip(recall[k], precision[k]):
        stop = int(np.searchsorted(r, max_recall, side='right')) + 1
        ax.plot(r[:stop], p[:stop], color=_color(net), lw=0.9, alpha=0.8)
    ax.set_title(class_names[k], fontsize=9)
    ax.grid(alpha=0.3)
  axes[0].set_xlim(0, max_recall)
  axes[0].set_ylim(0, 1.02)
  # Neighbouring panels touch: drop the last recall tick to keep labels apart.
  axes[0].xaxis.set_major_locator(ticker.MaxNLocator(5, prune='upper'))
  for ax in axes[-5:]:
    ax.set_xlabel('recall')
  for ax in axes[::5]:
    ax.set_ylabel('precision')
  _net_legend(fig, list(curves))
  fig.suptitle(title)
  return tables.save_figure(fig, path)


def subset_ap_curves(path: str,
                     curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
                     class_names: Sequence[str], *, title: str = '') -> str:
  """Seeds fig 3-4: GT-box classification AP against the number of filters.

  Args:
    path: the PNG to write.
    curves: net -> (sizes [S], ap [C, S]) AP of each class with its top-k
      filters, for each k of sizes.
    class_names: [C] panel titles.
    title: figure title.

  Returns:
    `path` (x: number of filters, log scale).
  """
  plt = _pyplot()
  fig, axes = _class_panels(plt, len(class_names))
  for k, ax in enumerate(axes):
    for net, (sizes, ap) in curves.items():
      ax.plot(sizes, ap[k], color=_color(net), marker='.', lw=1.2)
    ax.set_title(class_names[k], fontsize=9)
    ax.grid(alpha=0.3)
  _log_x(axes[0])
  axes[0].set_ylim(0, 1.02)
  for ax in axes[-5:]:
    ax.set_xlabel('filters')
  for ax in axes[::5]:
    ax.set_ylabel('AP')
  _net_legend(fig, list(curves))
  fig.suptitle(title)
  return tables.save_figure(fig, path)


def _heatmap(fig, ax, matrix, row_labels: Sequence[str],
             column_labels: Sequence[str], *, vmin=None, vmax=None,
             annotate: bool = False, cmap: str = 'viridis') -> None:
  matrix = np.asarray(matrix, np.float64)
  image = ax.imshow(matrix, vmin=vmin, vmax=vmax, cmap=cmap, aspect='auto')
  ax.set_xticks(range(len(column_labels)), column_labels, rotation=90,
                fontsize=8)
  ax.set_yticks(range(len(row_labels)), row_labels, fontsize=8)
  if annotate:
    for (i, j), value in np.ndenumerate(matrix):
      if np.isfinite(value):
        ax.text(j, i, f'{value:.2f}', ha='center', va='center', fontsize=6,
                color='w' if image.norm(value) < 0.5 else 'k')
  fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)


def overlap_heatmap(path: str, overlap, class_names: Sequence[str], *,
                    title: str = '') -> str:
  """Seeds fig 3-5: fraction of class i's top filters shared with class j.

  Args:
    path: the PNG to write.
    overlap: [C, C] in [0, 1] (`subsets.top_overlap`).
    class_names: [C] row and column labels.
    title: figure title.

  Returns:
    `path`.
  """
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(7.5, 6.5))
  _heatmap(fig, ax, overlap, class_names, class_names, vmin=0.0, vmax=1.0)
  ax.set_title(title, fontsize=10)
  fig.tight_layout()
  return tables.save_figure(fig, path)


def training_dynamics(path: str, grids: Sequence[tuple[int, np.ndarray]],
                      curves: Mapping[str, np.ndarray], *,
                      title: str = '') -> str:
  """Seeds fig 4-1: conv1 filters per snapshot; loss and top-1 over training.

  Args:
    path: the PNG to write.
    grids: (step, [H, W, 3] RGB image in [0, 1]) per snapshot, in order
      (`dynamics.filter_grid`).
    curves: `dynamics.training_curves` output.
    title: figure title.

  Returns:
    `path`. Dotted verticals mark the learning-rate drops.
  """
  plt = _pyplot()
  count = max(1, len(grids))
  width = max(10.0, 2.0 * count)
  # The filter row gets the height its square grids need at this width,
  # plus room for their titles.
  row = 1.25 * width / count
  fig = plt.figure(figsize=(width, 4.0 + row))
  spec = fig.add_gridspec(2, 2 * count, height_ratios=(row, 4.0))
  for i, (step, image) in enumerate(grids):
    ax = fig.add_subplot(spec[0, 2 * i:2 * i + 2])
    ax.imshow(image, interpolation='nearest')
    ax.set_title(f'step {step}', fontsize=9)
    ax.axis('off')
  loss_ax = fig.add_subplot(spec[1, :count])
  top1_ax = fig.add_subplot(spec[1, count:])
  loss_ax.plot(curves['step'], curves['loss'], lw=1.0, color='tab:blue')
  loss_ax.set_ylabel('training loss')
  top1_ax.plot(curves['step'], curves['top1'], lw=1.0, color='tab:gray',
               alpha=0.7, label='train (batch)')
  if len(curves['eval_step']):
    top1_ax.plot(curves['eval_step'], curves['val_top1'], marker='o',
                 color='tab:red', label='validation')
  top1_ax.set_ylabel('top-1 accuracy')
  top1_ax.legend(fontsize=8)
  for ax in (loss_ax, top1_ax):
    for drop in curves['lr_drops']:
      ax.axvline(drop, color='k', linestyle=':', lw=1.0)
    ax.set_xlabel('iteration')
    ax.grid(alpha=0.3)
  fig.suptitle(title)
  fig.tight_layout(h_pad=0.5, w_pad=0.2)
  return tables.save_figure(fig, path)


def cka_by_layer(path: str, values: Mapping[str, np.ndarray],
                 layers: Sequence[str], *, title: str = '',
                 ylabel: str = 'linear CKA') -> str:
  """Linear CKA of each layer between a reference net and others, as lines.

  Args:
    path: the PNG to write.
    values: net -> [L] CKA per layer (one line each).
    layers: [L] x-axis labels.
    title: figure title.
    ylabel: y-axis label.

  Returns:
    `path`.
  """
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(7.0, 4.0))
  for net, row in values.items():
    ax.plot(range(len(layers)), row, marker='o', color=_color(net),
            label=_label(net))
  ax.set_xticks(range(len(layers)), layers)
  ax.set_ylim(0, 1.02)
  ax.set_ylabel(ylabel)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  ax.set_title(title, fontsize=10)
  fig.tight_layout()
  return tables.save_figure(fig, path)


def cka_heatmaps(path: str,
                 panels: Mapping[str, tuple[np.ndarray, Sequence[str],
                                            Sequence[str]]], *,
                 title: str = '') -> str:
  """One annotated CKA heat map per panel, side by side, colour range [0, 1].

  Args:
    path: the PNG to write.
    panels: panel title -> (matrix [R, K], row labels [R], column labels [K]).
    title: figure title.

  Returns:
    `path`.
  """
  plt = _pyplot()
  fig, axes = plt.subplots(1, len(panels), squeeze=False,
                           figsize=(6.0 * len(panels), 4.8))
  for ax, (name, (matrix, rows, columns)) in zip(axes[0], panels.items()):
    _heatmap(fig, ax, matrix, rows, columns, vmin=0.0, vmax=1.0,
             annotate=True)
    ax.set_title(name, fontsize=10)
  fig.suptitle(title)
  fig.tight_layout()
  return tables.save_figure(fig, path)

