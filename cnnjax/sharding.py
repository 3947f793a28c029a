"""The data-parallel mesh every jitted pass of the project runs on."""

from __future__ import annotations

from typing import Optional

import jax


def data_mesh(devices: Optional[list] = None) -> jax.sharding.Mesh:
  """A 1-D ('data',) mesh over `devices` (all devices by default).

  Auto axes: XLA propagates the batch sharding through the model, whose
  reshapes (pooling scatters, space-to-depth, the fc6 flatten) would each
  need an output sharding under Explicit axes, `jax.make_mesh`'s default.
  """
  devices = jax.devices() if devices is None else list(devices)
  return jax.make_mesh((len(devices),), ('data',),
                       axis_types=(jax.sharding.AxisType.Auto,),
                       devices=devices)
