"""The README's interactive example runs as written, on a tiny checkpoint.

The block under "## Interactive use" is executed as it stands, with
CNNJAX_CHECKPOINT pointing at a small CaffeNet saved here the way training
saves one (params + its config in the metadata). Its fc7 features are
checked against the reference warp (`regions.warp_region`, box by box).
"""

import os
import pathlib
import re

import jax
import numpy as np

from cnnjax import checkpoints
from cnnjax.data import regions
from cnnjax.models import caffenet

README = pathlib.Path(__file__).resolve().parents[1] / 'README.md'
_SIZE = 67


def readme_block(heading: str = '## Interactive use') -> str:
  """The first ```python block after `heading` in README.md."""
  text = README.read_text()
  start = text.index(heading)
  match = re.compile(r'```python\n(.*?)```', re.S).search(text, start)
  assert match is not None, f'no python block after {heading!r}'
  return match.group(1)


def test_readme_interactive_example(tmp_path, monkeypatch, capsys):
  model = caffenet.CaffeNet(num_classes=21, width=0.125)
  params = caffenet.init_params(model, jax.random.key(0), image_size=_SIZE)
  checkpoint = str(tmp_path / 'nets' / 'ft')
  checkpoints.save_params(checkpoint, params,
                          metadata={'config': {'input': {'image_size': _SIZE}}})
  monkeypatch.setenv('CNNJAX_CHECKPOINT', checkpoint)

  namespace = {}
  exec(compile(readme_block(), str(README), 'exec'), namespace)  # pylint: disable=exec-used

  assert namespace['size'] == _SIZE
  fc7 = namespace['fc7']
  assert fc7.shape == (3, 512)
  assert "'fc7': (3, 512)" in capsys.readouterr().out
  # The same boxes through the reference warp and the example's forward.
  reference = np.stack([
      regions.warp_region(namespace['image'], box, size=_SIZE,
                          context=round(16 * _SIZE / 227))
      for box in namespace['boxes']])
  _, blobs = namespace['forward']({'params': params}, reference)
  np.testing.assert_allclose(fc7, np.asarray(blobs['fc7']), rtol=1e-3,
                             atol=1e-3)
  assert os.path.samefile(namespace['checkpoint'], checkpoint)
