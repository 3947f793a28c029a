"""Test setup: 8 fake CPU devices, forced before jax is first imported."""

import os

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import pathlib  # noqa: E402

import pytest  # noqa: E402

VOC_MINI = pathlib.Path(os.environ.get(
    'CNNJAX_VOC_MINI',
    pathlib.Path(__file__).resolve().parents[2] / 'shared' / 'data' / 'voc_mini'))


@pytest.fixture(scope='session')
def voc_mini_devkit() -> pathlib.Path:
  """The real VOC2007 fixture at ../shared/data/voc_mini (never copied in)."""
  devkit = VOC_MINI / 'VOCdevkit'
  if not devkit.is_dir():
    pytest.skip(f'voc_mini fixture absent: expected it at {devkit} '
                '(../shared/data/voc_mini beside the checkout)')
  return devkit
