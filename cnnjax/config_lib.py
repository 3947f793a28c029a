"""Config-string parsing: `configs/x.py:runlocal,layer=fc7` -> a typed ConfigDict.

Each config's `get_config(arg)` calls `parse_arg(arg, **defaults)`; the type
of every default decides how its value is parsed, and bools are strict (the
string 'False' is false, 'yes' is an error).
"""

from __future__ import annotations

import importlib.util
import json
import os
from typing import Any

import ml_collections

_TRUE = ('true', '1')
_FALSE = ('false', '0')


def _parse_bool(key: str, text: str) -> bool:
  lowered = text.lower()
  if lowered in _TRUE:
    return True
  if lowered in _FALSE:
    return False
  raise ValueError(f'config arg {key!r}: expected a bool (True/False/1/0), '
                   f'got {text!r}')


def _parse_value(key: str, text: str, default: Any) -> Any:
  if isinstance(default, bool):
    return _parse_bool(key, text)
  if isinstance(default, int):
    return int(text)
  if isinstance(default, float):
    return float(text)
  if isinstance(default, (tuple, list)):
    kind = type(default[0]) if default else str
    return tuple(_parse_value(key, part, kind()) for part in text.split('+')
                 if part)
  return text


def parse_arg(arg: str | None, lazy: bool = False,
              **spec: Any) -> ml_collections.ConfigDict:
  """Parses 'key=value,flag' into a ConfigDict over the typed defaults `spec`.

  Args:
    arg: the text after ':' in `--config file.py:arg` (None or '' for none).
    lazy: accept keys missing from `spec` (as strings).
    **spec: every known key with its default; the default's type is the
      value's type. A bare `flag` sets a bool to True. Tuple values are
      written `a+b+c`.

  Returns:
    A ConfigDict with every key of `spec`, overridden by `arg`.

  Raises:
    ValueError: an unknown key (naming it and the known ones) or a bad value.
  """
  result = ml_collections.ConfigDict(dict(spec))
  for item in filter(None, (arg or '').split(',')):
    key, sep, text = item.partition('=')
    key = key.strip()
    if key not in spec:
      if not lazy:
        raise ValueError(f'unknown config arg {key!r}; known: '
                         f'{", ".join(sorted(spec))}')
      result[key] = text if sep else True
      continue
    if not sep:
      if not isinstance(spec[key], bool):
        raise ValueError(f'config arg {key!r} needs a value ({key}=...)')
      result[key] = True
      continue
    result[key] = _parse_value(key, text.strip(), spec[key])
  return result


def write_text_atomic(path: str, text: str) -> None:
  """Writes `text` to `path` through a temp file + rename (never half a
  file), creating the folder."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f'{path}.tmp{os.getpid()}'
  with open(tmp, 'w') as f:
    f.write(text)
  os.replace(tmp, path)


def write_json_atomic(path: str, payload: Any) -> None:
  """Writes JSON to `path` atomically (`write_text_atomic`)."""
  write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True,
                                     default=str))


def sibling_config_module(anchor_file: str, name: str) -> Any:
  """The module of the config file `name` beside `anchor_file`.

  Lets one experiment config build on another (detection on the finetuning
  config, finetuning on the demo pretraining run) without making configs/ an
  importable package.
  """
  path = os.path.join(os.path.dirname(os.path.abspath(anchor_file)), name)
  spec = importlib.util.spec_from_file_location(
      f'cnnjax_config_{os.path.splitext(name)[0]}', path)
  if spec is None or not os.path.exists(path):
    raise FileNotFoundError(f'config file {path} not found')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load_sibling_config(anchor_file: str, name: str,
                        arg: str | None = None) -> ml_collections.ConfigDict:
  """`get_config(arg)` of the config file `name` beside `anchor_file`."""
  return sibling_config_module(anchor_file, name).get_config(arg)
