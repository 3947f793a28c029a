"""Training-dynamics helpers against numpy loop references."""

import json

import numpy as np
import pytest

from cnnjax.analysis import dynamics


def _kernel(seed=0, num_filters=5):
  return np.random.default_rng(seed).normal(
      size=(11, 11, 3, num_filters)).astype(np.float32)


def test_normalise_filters_matches_per_filter_loop():
  kernel = _kernel()
  kernel[..., 3] = 0.25                                     # a constant filter
  got = dynamics.normalise_filters(kernel)
  assert got.shape == (5, 11, 11, 3) and got.dtype == np.float32
  for c in range(5):
    rgb = kernel[:, :, [2, 1, 0], c].astype(np.float64)     # BGR -> RGB
    lo, hi = rgb.min(), rgb.max()
    want = np.full_like(rgb, 0.5) if hi == lo else (rgb - lo) / (hi - lo)
    np.testing.assert_allclose(got[c], want, atol=1e-6)


def test_normalise_filters_puts_blue_input_in_the_blue_channel():
  kernel = np.zeros((11, 11, 3, 1), np.float32)
  kernel[5, 5, 0, 0] = 1.0                                  # input channel B
  image = dynamics.normalise_filters(kernel)[0]
  assert image[5, 5].tolist() == [0.0, 0.0, 1.0]            # RGB: blue only


def test_normalise_filters_rejects_other_shapes():
  with pytest.raises(ValueError, match=r'\[kh, kw, 3, C\]'):
    dynamics.normalise_filters(np.zeros((11, 11, 4, 2)))


@pytest.mark.parametrize('columns,pad', [(None, 1), (2, 0), (5, 2)])
def test_filter_grid_places_every_tile(columns, pad):
  kernel = _kernel(1)
  tiles = dynamics.normalise_filters(kernel)
  grid = dynamics.filter_grid(kernel, columns=columns, pad=pad,
                              background=0.7)
  cols = columns or 3                                       # ceil(sqrt(5))
  rows = -(-5 // cols)
  want = np.full((rows * (11 + pad) + pad, cols * (11 + pad) + pad, 3), 0.7,
                 np.float32)
  for i in range(5):
    r, c = divmod(i, cols)
    y, x = pad + r * (11 + pad), pad + c * (11 + pad)
    want[y:y + 11, x:x + 11] = tiles[i]
  np.testing.assert_array_equal(grid, want)


def test_training_curves_from_records():
  records = [
      {'step': 10, 'loss': 3.0, 'top1': 0.1, 'lr': 0.01},
      {'step': 20, 'loss': 2.5, 'top1': 0.2, 'lr': 0.01},
      {'step': 20, 'val_top1': 0.15, 'val_top5': 0.4, 'val_loss': 2.7},
      {'step': 30, 'loss': 2.4, 'top1': 0.25, 'lr': 0.01},
      {'step': 30, 'loss': 2.2, 'top1': 0.3, 'lr': 0.01},    # resumed: last
      {'step': 40, 'loss': 2.0, 'top1': 0.35, 'lr': 0.001},
      {'step': 40, 'val_top1': 0.3, 'val_top5': 0.6, 'val_loss': 2.1},
      {'step': 50, 'loss': 1.9, 'top1': 0.4, 'lr': 0.0001},
  ]
  curves = dynamics.training_curves(records)
  np.testing.assert_array_equal(curves['step'], [10, 20, 30, 40, 50])
  np.testing.assert_allclose(curves['loss'], [3.0, 2.5, 2.2, 2.0, 1.9])
  np.testing.assert_allclose(curves['top1'], [0.1, 0.2, 0.3, 0.35, 0.4])
  np.testing.assert_array_equal(curves['eval_step'], [20, 40])
  np.testing.assert_allclose(curves['val_top1'], [0.15, 0.3])
  np.testing.assert_allclose(curves['val_top5'], [0.4, 0.6])
  np.testing.assert_allclose(curves['val_loss'], [2.7, 2.1])
  np.testing.assert_array_equal(curves['lr_drops'], [40, 50])


def test_training_curves_without_evaluations():
  curves = dynamics.training_curves([{'step': 1, 'loss': 1.0}])
  assert curves['eval_step'].shape == (0,) and 'val_top5' not in curves
  assert np.isnan(curves['top1'][0]) and curves['lr_drops'].shape == (0,)


def test_read_metrics_skips_blank_lines_and_names_bad_ones(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  rows = [{'step': 1, 'loss': 2.0}, {'step': 2, 'val_top1': 0.5}]
  path.write_text(json.dumps(rows[0]) + '\n\n' + json.dumps(rows[1]) + '\n')
  assert dynamics.read_metrics(str(path)) == rows
  path.write_text(json.dumps(rows[0]) + '\n{"loss": 1}\n')
  with pytest.raises(ValueError, match=r'metrics.jsonl:2'):
    dynamics.read_metrics(str(path))
  path.write_text('not json\n')
  with pytest.raises(ValueError, match=r'metrics.jsonl:1: not JSON'):
    dynamics.read_metrics(str(path))
