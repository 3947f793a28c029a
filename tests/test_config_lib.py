"""Config-string parsing: typed defaults, strict bools, unknown keys."""

import json

import pytest

from cnnjax import config_lib


def test_typed_values_and_flags():
  cfg = config_lib.parse_arg('runlocal,layer=fc7,steps=12,lr=0.5,keep=5+15',
                             runlocal=False, layer='pool5', steps=1, lr=0.1,
                             keep=(1,))
  assert cfg.runlocal is True
  assert cfg.layer == 'fc7'
  assert cfg.steps == 12 and isinstance(cfg.steps, int)
  assert cfg.lr == 0.5
  assert cfg.keep == (5, 15)


@pytest.mark.parametrize('text,expected', [('False', False), ('false', False),
                                           ('0', False), ('True', True),
                                           ('1', True)])
def test_strict_bools(text, expected):
  assert config_lib.parse_arg(f'runlocal={text}', runlocal=True).runlocal is expected


def test_bad_bool_is_an_error():
  with pytest.raises(ValueError, match='runlocal'):
    config_lib.parse_arg('runlocal=yes', runlocal=False)


def test_unknown_key_names_it_and_the_known_ones():
  with pytest.raises(ValueError, match=r"'layr'.*layer"):
    config_lib.parse_arg('layr=fc7', layer='pool5')


def test_lazy_accepts_unknown_keys():
  cfg = config_lib.parse_arg('extra=3,flag', lazy=True, layer='pool5')
  assert cfg.extra == '3' and cfg.flag is True and cfg.layer == 'pool5'


def test_empty_arg_gives_defaults():
  assert config_lib.parse_arg(None, a=1).a == 1
  assert config_lib.parse_arg('', a=1).a == 1


def test_write_json_atomic(tmp_path):
  path = tmp_path / 'sub' / 'x.json'
  config_lib.write_json_atomic(str(path), {'a': 1})
  assert json.loads(path.read_text()) == {'a': 1}
  assert [p.name for p in path.parent.iterdir()] == ['x.json']
