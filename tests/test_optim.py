"""Caffe SGD against a numpy transcription of SPEC 2; rules and boundaries."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cnnjax import optim
from cnnjax.models import caffenet

BASE_LR, GAMMA, STEPSIZE, MOMENTUM, WD = 0.01, 0.1, 7, 0.9, 5e-4


def _toy_params(rng):
  shapes = {'conv1': {'kernel': (3, 3, 2, 4), 'bias': (4,)},
            'fc7': {'kernel': (6, 5), 'bias': (5,)},
            'fc8': {'kernel': (5, 3), 'bias': (3,)}}
  return jax.tree_util.tree_map(
      lambda shape: rng.normal(size=shape).astype(np.float32), shapes,
      is_leaf=lambda x: isinstance(x, tuple))


RULES = (('^conv1/', None),) + optim.new_head_rules('fc8') + optim.DEFAULT_RULES
# (lr_mult, decay_mult) per parameter as SPEC 2 says; None = frozen.
EXPECTED_MULTS = {
    ('conv1', 'kernel'): None, ('conv1', 'bias'): None,
    ('fc7', 'kernel'): (1.0, 1.0), ('fc7', 'bias'): (2.0, 0.0),
    ('fc8', 'kernel'): (10.0, 1.0), ('fc8', 'bias'): (20.0, 0.0),
}


def _numpy_caffe_sgd(params, grads_per_step):
  """SPEC 2 written out with float64 numpy, one parameter at a time."""
  weights = {k: np.asarray(params[k[0]][k[1]], np.float64)
             for k in EXPECTED_MULTS}
  history = {k: np.zeros_like(w) for k, w in weights.items()}
  for it, grads in enumerate(grads_per_step):
    lr = BASE_LR * GAMMA ** (it // STEPSIZE)
    for key, mults in EXPECTED_MULTS.items():
      if mults is None:
        continue
      lr_mult, decay_mult = mults
      g = grads[key[0]][key[1]] + WD * decay_mult * weights[key]
      history[key] = MOMENTUM * history[key] + lr * lr_mult * g
      weights[key] = weights[key] - history[key]
  return weights


def test_caffe_sgd_matches_numpy_transcription_across_lr_drops():
  rng = np.random.default_rng(0)
  params = _toy_params(rng)
  grads_per_step = [_toy_params(rng) for _ in range(20)]  # drops at 7 and 14
  tx = optim.caffe_optimizer(params, RULES, base_lr=BASE_LR, gamma=GAMMA,
                             stepsize=STEPSIZE, momentum=MOMENTUM,
                             weight_decay=WD)
  mask = optim.frozen_mask(params, RULES)

  @jax.jit
  def step(p, state, g):
    updates, state = tx.update(g, state, p)
    return optim.keep_frozen(optax.apply_updates(p, updates), p, mask), state

  current, state = params, tx.init(params)
  for grads in grads_per_step:
    current, state = step(current, state, grads)
  expected = _numpy_caffe_sgd(params, grads_per_step)
  for (layer, name), value in expected.items():
    np.testing.assert_allclose(np.asarray(current[layer][name]), value,
                               rtol=2e-5, atol=1e-6,
                               err_msg=f'{layer}/{name}')
  # Frozen: bit-identical.
  for name in ('kernel', 'bias'):
    np.testing.assert_array_equal(np.asarray(current['conv1'][name]),
                                  params['conv1'][name])


def test_lr_inside_momentum_differs_from_optax_sgd_after_a_drop():
  # One parameter, constant gradient: after the drop, Caffe's V still holds
  # the old lr, optax.sgd rescales its whole buffer by the new lr.
  schedule = optim.step_schedule(1.0, 0.1, 1)
  caffe = optim.caffe_sgd(schedule, momentum=0.9, weight_decay=0.0)
  w = jnp.zeros([1])
  g = jnp.ones([1])
  state = caffe.init(w)
  updates = []
  for _ in range(2):
    u, state = caffe.update(g, state, w)
    updates.append(float(u[0]))
  # it 0: V = 1*1 = 1; it 1: V = 0.9*1 + 0.1*1 = 1.0 (optax.sgd: 0.1*1.9).
  assert updates == pytest.approx([-1.0, -1.0])
  sgd = optax.sgd(schedule, momentum=0.9)
  sgd_state = sgd.init(w)
  sgd_updates = []
  for _ in range(2):
    u, sgd_state = sgd.update(g, sgd_state, w)
    sgd_updates.append(float(u[0]))
  assert sgd_updates == pytest.approx([-1.0, -0.19])


def test_step_schedule_values():
  schedule = optim.step_schedule(0.01, 0.1, 100_000)
  values = [float(schedule(jnp.int32(it)))
            for it in (0, 99_999, 100_000, 200_000, 309_999)]
  assert values == pytest.approx([0.01, 0.01, 0.001, 1e-4, 1e-5], rel=1e-6)


def test_uncovered_parameter_error_names_it():
  params = _toy_params(np.random.default_rng(1))
  with pytest.raises(ValueError, match="'fc7/bias'"):
    optim.match_rules(params, (('/kernel$', (1.0, 1.0)), ('^fc8/', (1, 0)),
                               ('^conv1/', None)))


def test_first_matching_rule_wins():
  params = _toy_params(np.random.default_rng(2))
  matches = optim.match_rules(params, RULES)
  assert {tuple(k.split('/')): v for k, v in matches.items()} == EXPECTED_MULTS


@pytest.mark.parametrize('frozen, boundary', [
    ((), None),
    (('conv1',), 'norm1'),
    (('conv1', 'conv2'), 'norm2'),
    (('conv1', 'conv2', 'conv3'), 'conv3'),
    (('conv1', 'conv2', 'conv3', 'conv4', 'conv5'), 'pool5'),
    (('conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'fc6', 'fc7'), 'fc7'),
    (('conv2', 'conv3'), None),       # conv1 trains: nothing can be cut
    (('conv1', 'conv3'), 'norm1'),    # only the contiguous prefix
])
def test_frozen_boundary(frozen, boundary):
  model = caffenet.CaffeNet(num_classes=3, width=0.0625)
  shapes = jax.eval_shape(
      lambda: caffenet.init_params(model, jax.random.key(0), image_size=67))
  rules = optim.freeze_rules(frozen) + optim.DEFAULT_RULES
  assert optim.frozen_boundary(shapes, rules) == boundary
