"""Every bench script runs on a fresh install and prints the JSON it documents.

Tiny settings (a few images, one timed run): these check that the scripts
work and report their comparisons, not the speeds (bench/README.md has those).
"""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOC_MINI = os.path.join(os.path.dirname(ROOT), 'shared', 'data', 'voc_mini')
HAS_TORCH = importlib.util.find_spec('torch') is not None


def run_bench(script: str, *args: str) -> dict:
  """Runs bench/<script> on one CPU device; its stdout parsed as JSON."""
  env = {**os.environ, 'XLA_FLAGS': '', 'JAX_PLATFORMS': 'cpu'}
  result = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'bench', script), *args],
      capture_output=True, text=True, env=env, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout)


def test_caffenet_reports_jax_against_torch_or_skips_it():
  args = ['--batch-sizes', '2', '--runs', '1', '--warmup', '0',
          '--modes', 'inference,fcft', '--num-classes', '21']
  out = run_bench('bench_caffenet.py', *args)
  jax_rows = [r for r in out['results'] if r['framework'] == 'jax']
  assert {r['mode'] for r in jax_rows} == {'inference', 'fcft'}
  assert all(r['images_per_s'] > 0 for r in jax_rows)
  if HAS_TORCH:
    assert {r['mode'] for r in out['jax_over_torch']} == {'inference', 'fcft'}


def test_freeze_drops_the_backward_convolutions():
  out = run_bench('bench_freeze.py', '--batch-size', '2', '--runs', '1',
                  '--width', '0.25', '--size', '99')
  assert out['ft']['convolutions_compiled_hlo'] == 23
  assert out['fcft']['convolutions_compiled_hlo'] == 8
  assert out['fcft']['stop_gradient_after'] == 'pool5'
  assert out['fcft_over_ft_time'] > 0


def test_svm_matches_sklearn():
  out = run_bench('bench_svm.py', '--dims', '16', '--n', '300', '--n-test',
                  '100', '--classes', '3', '--runs', '1', '--subsets-dim',
                  '12')
  (row,) = out['results']
  assert row['speedup'] > 0
  assert abs(row['test_map_jax'] - row['test_map_sklearn']) < 0.02
  assert out['subsets']['svms'] == 3 * len(out['subsets']['sizes'])
  assert abs(out['subsets']['objective_rel_diff_mean']) < 1e-2


def test_analysis_vectorised_equals_loops():
  out = run_bench('bench_analysis.py', '--sizes', '60,120', '--runs', '1',
                  '--loop-filters', '2', '--table-examples', '40')
  rows = out['scaling']['rows']
  assert {r['analysis'] for r in rows} == {'entropy', 'filter_ap'}
  assert max(r['max_abs_diff_vs_loop'] for r in rows) < 1e-5
  assert out['table']['total_s'] > 0


def test_extract_reports_regions_per_second():
  out = run_bench('bench_extract.py', '--num-images', '1', '--proposals', '6',
                  '--batch-size', '4', '--width', '0.25', '--size', '99',
                  '--runs', '1')
  assert out['end_to_end']['regions'] > 6      # proposals plus GT rows
  assert out['forward_regions_per_s'] > 0 and out['warp_regions_per_s'] > 0


@pytest.mark.skipif(not os.path.isdir(VOC_MINI),
                    reason=f'voc_mini fixture absent at {VOC_MINI}')
def test_proposals_on_voc_mini():
  out = run_bench('bench_proposals.py', '--max-images', '1')
  assert out['images'] == 1 and out['boxes_per_image']['mean'] > 500


@pytest.mark.skipif(not HAS_TORCH, reason='torch absent (pip install .[bench])')
def test_layers_profile_matches_torch():
  out = run_bench('bench_layers.py', '--batch', '1', '--runs', '1')
  assert out['jax_stages_vs_model_max_abs_diff'] < 1e-4
  assert out['torch_vs_jax_logits_max_abs_diff'] < 1e-3


def test_steps_ablations_run():
  out = run_bench('bench_steps.py', '--batch', '2', '--runs', '1',
                  '--modes', 'inference', '--variants',
                  'xla_default_options,reduce_window_pool', '--no-init')
  variants = out['modes']['inference']
  assert {'shipped', 'xla_default_options', 'reduce_window_pool'} <= set(
      variants)
