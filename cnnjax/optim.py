"""Caffe's SGD as an optax transformation, per-parameter rules, freezing.

Caffe keeps the learning rate INSIDE the momentum buffer (SPEC 2):

  g = grad + wd * decay_mult * W
  V = momentum * V + lr * lr_mult * g
  W = W - V

`optax.sgd(lr, momentum)` instead scales the buffer by the current lr
(`W -= lr * (momentum * V + g)`), which differs from Caffe at every lr drop.

Per-parameter behaviour is a list of rules `(regex, (lr_mult, decay_mult))`
or `(regex, None)` (frozen) over '/'-joined parameter names such as
'conv1/kernel' or 'fc8/bias'. The first rule whose regex matches
(`re.search`) wins and every parameter must be matched, so a typo cannot
silently train (or freeze) the wrong layer. Frozen parameters go through
`optax.set_to_zero()` inside `optax.multi_transform`: `optax.masked` would
pass their raw gradients through as updates. The training step also leaves
frozen leaves untouched (`keep_frozen`), so they stay bit-identical, and
`frozen_boundary` names the blob below which the backward pass can be cut.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple, Optional, Sequence

from absl import logging
import flax.traverse_util
import jax
import jax.numpy as jnp
import optax

from cnnjax.models import caffenet

# (lr_mult, decay_mult) or None (frozen).
Multipliers = Optional[tuple[float, float]]
Rules = Sequence[tuple[str, Multipliers]]

# Caffe's convention in every layer of CaffeNet: weights 1/1, biases 2/0.
DEFAULT_RULES: Rules = (
    ('/kernel$', (1.0, 1.0)),
    ('/bias$', (2.0, 0.0)),
)
FROZEN = 'frozen'


def new_head_rules(head: str = 'fc8') -> Rules:
  """A freshly initialised head learns 10x faster (R-CNN's fc8: 10/20)."""
  return ((f'^{head}/kernel$', (10.0, 1.0)),
          (f'^{head}/bias$', (20.0, 0.0)))


def freeze_rules(layers: Sequence[str]) -> Rules:
  """Rules freezing every parameter of `layers` (e.g. conv1..conv5: FC-FT)."""
  return tuple((f'^{layer}/', None) for layer in layers)


def step_schedule(base_lr: float, gamma: float,
                  stepsize: int) -> optax.Schedule:
  """Caffe's 'step' policy: base_lr * gamma ** floor(it / stepsize).

  It never depends on the total number of iterations, so extending a run
  keeps the schedule of the steps already taken.
  """
  if stepsize <= 0:
    raise ValueError(f'stepsize must be positive, got {stepsize}')

  def schedule(count):
    drops = jnp.floor_divide(count, stepsize).astype(jnp.float32)
    return base_lr * jnp.power(jnp.float32(gamma), drops)

  return schedule


class CaffeSgdState(NamedTuple):
  count: jax.Array  # int32 [], iterations taken (Caffe's iter_)
  velocity: optax.Updates  # Caffe's history_, lr already inside


def caffe_sgd(learning_rate: optax.ScalarOrSchedule, momentum: float = 0.9,
              weight_decay: float = 5e-4, lr_mult: float = 1.0,
              decay_mult: float = 1.0) -> optax.GradientTransformation:
  """Caffe's SGDSolver update for one group of parameters (SPEC 2).

  Args:
    learning_rate: a float or a schedule of the iteration count (the count
      before this update: Caffe's first update uses lr(0)).
    momentum: Caffe's `momentum`.
    weight_decay: Caffe's `weight_decay`; scaled by `decay_mult`.
    lr_mult: this group's learning-rate multiplier.
    decay_mult: this group's weight-decay multiplier.

  Returns:
    A transformation whose `update(grads, state, params)` returns `-V`, so
    `optax.apply_updates` performs `W = W - V`. `params` are required (weight
    decay acts on them).
  """

  def init_fn(params):
    return CaffeSgdState(
        count=jnp.zeros([], jnp.int32),
        velocity=jax.tree_util.tree_map(jnp.zeros_like, params))

  def update_fn(grads, state, params=None):
    if params is None:
      raise ValueError('caffe_sgd needs params (weight decay acts on them)')
    lr = (learning_rate(state.count) if callable(learning_rate) else
          learning_rate)
    rate = lr * lr_mult
    decay = weight_decay * decay_mult

    def new_velocity(v, g, w):
      return (momentum * v + rate * (g + decay * w)).astype(v.dtype)

    velocity = jax.tree_util.tree_map(new_velocity, state.velocity, grads,
                                      params)
    updates = jax.tree_util.tree_map(jnp.negative, velocity)
    return updates, CaffeSgdState(optax.safe_increment(state.count), velocity)

  return optax.GradientTransformation(init_fn, update_fn)


def param_names(params: Any) -> list[str]:
  """'/'-joined names of every leaf ('conv1/kernel', ...), in tree order."""
  return list(flax.traverse_util.flatten_dict(params, sep='/'))


def match_rules(params: Any, rules: Rules) -> dict[str, Multipliers]:
  """The multipliers of every parameter: the first matching rule wins.

  Each match is logged so a run's record shows what trained and what froze.

  Raises:
    ValueError: naming the first parameter that no rule matches.
  """
  compiled = [(re.compile(pattern), mults) for pattern, mults in rules]
  matches = {}
  for name in param_names(params):
    for pattern, mults in compiled:
      if pattern.search(name):
        matches[name] = None if mults is None else (float(mults[0]),
                                                    float(mults[1]))
        logging.info('optimiser rule %r -> %s: %s', pattern.pattern, name,
                     FROZEN if mults is None else
                     f'lr_mult {mults[0]:g}, decay_mult {mults[1]:g}')
        break
    else:
      raise ValueError(
          f'parameter {name!r} matches no optimiser rule; rules: '
          f'{[pattern for pattern, _ in rules]}')
  return matches


def _group_label(mults: Multipliers) -> str:
  if mults is None:
    return FROZEN
  return f'lr{mults[0]:g}_decay{mults[1]:g}'


def frozen_mask(params: Any, rules: Rules) -> Any:
  """A tree of Python bools like `params`: True where the rule is None."""
  matches = match_rules(params, rules)
  flat = {tuple(name.split('/')): matches[name] is None for name in matches}
  return flax.traverse_util.unflatten_dict(flat)


def caffe_optimizer(params: Any, rules: Rules, *, base_lr: float,
                    gamma: float, stepsize: int, momentum: float = 0.9,
                    weight_decay: float = 5e-4) -> optax.GradientTransformation:
  """Caffe SGD with the step schedule, one group per (lr_mult, decay_mult).

  Args:
    params: the parameter tree (only its structure and names are used).
    rules: `(regex, (lr_mult, decay_mult) | None)` pairs, first match wins.
    base_lr, gamma, stepsize: the step learning-rate policy.
    momentum, weight_decay: Caffe's solver values (0.9 and 0.0005 in the study).

  Returns:
    An `optax.multi_transform` whose frozen group is `set_to_zero` (and keeps
    no momentum buffers).

  Raises:
    ValueError: a parameter that no rule covers.
  """
  matches = match_rules(params, rules)
  schedule = step_schedule(base_lr, gamma, stepsize)
  transforms = {}
  for mults in set(matches.values()):
    label = _group_label(mults)
    transforms[label] = (optax.set_to_zero() if mults is None else caffe_sgd(
        schedule, momentum, weight_decay, lr_mult=mults[0],
        decay_mult=mults[1]))
  labels = flax.traverse_util.unflatten_dict({
      tuple(name.split('/')): _group_label(mults)
      for name, mults in matches.items()})
  return optax.multi_transform(transforms, labels)


def keep_frozen(new_params: Any, old_params: Any, mask: Any) -> Any:
  """The new params with every frozen leaf replaced by its old value.

  `W + 0` is not always bit-identical (-0.0 + 0.0 == +0.0), so frozen leaves
  are carried over instead of updated; XLA then skips their update entirely.
  """
  return jax.tree_util.tree_map(
      lambda new, old, frozen: old if frozen else new,
      new_params, old_params, mask)


def frozen_boundary(params: Any, rules: Rules) -> Optional[str]:
  """The blob to cut autodiff at: the top of the contiguous frozen prefix.

  Gradients only need to flow down to the lowest trainable layer, so when
  conv1..conv5 are frozen (FC-FT) the backward pass stops at 'pool5', the
  input of fc6. Layers frozen above a trainable one cannot be cut (the
  gradient has to pass through them); `set_to_zero` still freezes them.

  Returns:
    A CaffeNet blob name for `stop_gradient_after`, or None when conv1 trains.
  """
  mask = flax.traverse_util.flatten_dict(frozen_mask(params, rules))
  boundary = None
  for index, layer in enumerate(caffenet.PARAM_LAYERS):
    leaves = [frozen for path, frozen in mask.items() if path[0] == layer]
    if not leaves or not all(leaves):
      break
    if index + 1 < len(caffenet.PARAM_LAYERS):
      next_layer = caffenet.PARAM_LAYERS[index + 1]
      # The last blob before the next parameterised layer (e.g. pool5 < fc6).
      boundary = caffenet.BLOBS[caffenet.BLOBS.index(next_layer) - 1]
    else:
      boundary = layer
  return boundary
