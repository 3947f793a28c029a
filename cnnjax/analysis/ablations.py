"""Feature ablations (seeds chapter 5, SPEC 6): location vs magnitude.

Every transform maps a layer's activations [N, H, W, F] (or [N, F] for fc
layers, treated as H = W = 1) to flat features [N, D] ready for a probe or
the detector; maps are flattened in Caffe's C,H,W order (index
c*H*W + y*W + x), the order fc6 reads pool5 in.

  unroll      the flat feature itself (the baseline);
  sp-shuffle  each map's H*W positions permuted independently for every
              example and every filter (location destroyed, values kept);
  sp-max      each map's maximum, [N, F] (location destroyed, one value);
  bin         x > 0 -> 1, else 0 (magnitude destroyed, location kept);
  sp-max-bin  bin(sp-max), [N, F];
  sm-bn-lc    binarised spatial max keeping its location: a map that is 1 at
              the position of the map's maximum (the first in row-major
              y, x order on ties) if that maximum is > 0, and 0 elsewhere;
              an all-zero map stays all zero. [N, F*H*W], the detection
              ablation of the conference draft's Table 5.

Use the same transform at train and test time; feature norms are then
recomputed per ablation (`probes.scale_features`), SPEC 6.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from cnnjax.models.caffenet import caffe_flatten


def _maps(acts):
  """[N, H, W, F] as given; [N, F] -> [N, 1, 1, F]."""
  acts = jnp.asarray(acts)
  if acts.ndim == 2:
    return acts[:, None, None, :]
  if acts.ndim != 4:
    raise ValueError('expected activations [N, H, W, F] or [N, F], got shape '
                     f'{tuple(acts.shape)}')
  return acts


@jax.jit
def unroll(acts):
  """[N, H, W, F] -> [N, F*H*W], Caffe C,H,W order."""
  return caffe_flatten(_maps(acts))


@jax.jit
def sp_max(acts):
  """[N, H, W, F] -> [N, F], each map's maximum."""
  return _maps(acts).max(axis=(1, 2))


@jax.jit
def binarize(acts):
  """The `bin` ablation: [N, H, W, F] -> [N, F*H*W] of (x > 0) as 0/1."""
  return (unroll(acts) > 0).astype(jnp.asarray(acts).dtype)


@jax.jit
def sp_max_bin(acts):
  """[N, H, W, F] -> [N, F], 1 where the map has any positive value."""
  return (sp_max(acts) > 0).astype(jnp.asarray(acts).dtype)


@jax.jit
def sm_bn_lc(acts):
  """Binarised spatial max with its location, [N, H, W, F] -> [N, F*H*W].

  Per map: 1 at the argmax position (first in row-major y, x order on
  ties) when the maximum is > 0; 0 everywhere else.
  """
  maps = _maps(acts)
  n, h, w, f = maps.shape
  flat = maps.reshape(n, h * w, f)                           # [N, P, F]
  peak = jnp.argmax(flat, axis=1)                            # [N, F]
  fired = flat.max(axis=1) > 0                               # [N, F]
  onehot = jax.nn.one_hot(peak, h * w, axis=1, dtype=maps.dtype)  # [N, P, F]
  onehot = onehot * fired[:, None, :].astype(maps.dtype)
  return caffe_flatten(onehot.reshape(n, h, w, f))


@jax.jit
def _shuffle(acts, rng, example_ids):
  maps = _maps(acts)
  n, h, w, f = maps.shape
  flat = maps.reshape(n, h * w, f)                           # [N, P, F]

  def noise(example_id):
    return jax.random.uniform(jax.random.fold_in(rng, example_id), (h * w, f))

  # argsort of i.i.d. uniforms along P is a uniform random permutation of
  # the positions, independent per example (its own key) and per filter.
  permutation = jnp.argsort(jax.vmap(noise)(example_ids), axis=1)  # [N, P, F]
  shuffled = jnp.take_along_axis(flat, permutation, axis=1)
  return caffe_flatten(shuffled.reshape(n, h, w, f))


def sp_shuffle(acts, rng, example_ids=None):
  """Spatial shuffle, [N, H, W, F] -> [N, F*H*W] (unrolled after shuffling).

  Each example's permutations come from `fold_in(rng, example_id)`, so an
  example is shuffled the same way whichever chunk or batch it arrives in,
  and a run is reproducible from its key. Use different keys (or disjoint
  ids) for train and test sets so that their permutations are independent.

  Args:
    acts: [N, H, W, F] or [N, F] (fc layers: nothing to shuffle).
    rng: a jax PRNG key.
    example_ids: [N] int identifiers of the examples (default 0..N-1).

  Returns:
    [N, F*H*W] with every map's positions permuted, then Caffe-flattened.
  """
  if rng is None:
    raise ValueError("the 'sp-shuffle' ablation needs a PRNG key (rng=)")
  num = jnp.shape(acts)[0]
  if example_ids is None:
    example_ids = jnp.arange(num, dtype=jnp.int32)
  return _shuffle(acts, rng, jnp.asarray(example_ids, jnp.int32))


ABLATIONS: dict[str, Callable] = {
    'unroll': unroll,
    'sp-shuffle': sp_shuffle,
    'sp-max': sp_max,
    'bin': binarize,
    'sp-max-bin': sp_max_bin,
    'sm-bn-lc': sm_bn_lc,
}
RANDOMISED = ('sp-shuffle',)


def apply_ablation(name: str, acts, rng=None, example_ids=None):
  """Applies the ablation `name` of ABLATIONS.

  Args:
    name: a key of ABLATIONS.
    acts: [N, H, W, F] or [N, F] activations.
    rng: PRNG key, required by the randomised ablations (sp-shuffle).
    example_ids: [N] ids of the examples for sp-shuffle (default 0..N-1).

  Returns:
    [N, D] features.

  Raises:
    ValueError: an unknown name (the message lists the valid ones), or a
      randomised ablation without a key.
  """
  if name not in ABLATIONS:
    raise ValueError(f'unknown ablation {name!r}; valid: '
                     f'{", ".join(ABLATIONS)}')
  if name in RANDOMISED:
    return ABLATIONS[name](acts, rng, example_ids)
  return ABLATIONS[name](acts)
