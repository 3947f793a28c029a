"""The study task: step order, selection, resume of unfinished steps only.

The unit tests drive `study.run` with the task functions replaced by
counters (no net is trained); the slow test runs a reduced real `:runlocal`
study and checks the report and the resume on it.
"""

import json
import os
import shutil

import ml_collections
import pytest

from cnnjax import config_lib
from cnnjax import study
from cnnjax import tasks
from cnnjax.reporting import report

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), 'configs')


def _study_config(arg):
  return config_lib.load_sibling_config(os.path.join(CONFIGS, 'x.py'),
                                        'study.py', arg)


@pytest.fixture(scope='module')
def demo_config():
  return _study_config('runlocal,det_grid=full')


class _Recorder:
  """Stands in for every task: records (task, config, workdir) per call."""

  def __init__(self, fail=()):
    self.calls, self.fail = [], set(fail)

  def task(self, name):
    def run(config, workdir):
      self.calls.append((name, config, workdir))
      if config.get('label') in self.fail:
        raise ValueError(f'{config.label} broke')
    return run


@pytest.fixture
def recorder(monkeypatch):
  recorder = _Recorder()
  monkeypatch.setattr(tasks, 'get_task', recorder.task)
  monkeypatch.setattr(study, 'STEP_TASKS', {'net': recorder.task('net')})
  return recorder


def _toy_config(labels=('a', 'b', 'c'), **overrides):
  """A study of steps 'a', 'b', 'c' (task 'train', configs named by label)."""
  steps = {label: ml_collections.ConfigDict(dict(
      task='train', config=ml_collections.ConfigDict({'label': label}),
      produces=(f'table{label}',), workdir='', seconds=1.0,
      what=f'step {label}')) for label in labels}
  config = ml_collections.ConfigDict(dict(
      task='study', runlocal=False, only=(), skip=(), keep_going=True,
      det_grid='full', args='x=1', demo=None, order=tuple(labels),
      steps=ml_collections.ConfigDict(steps)))
  config.update(overrides)
  return config


def _ran(recorder):
  return [config.label for _, config, _ in recorder.calls]


def test_demo_steps_come_after_what_they_use(demo_config):
  order = list(demo_config.order)
  steps = demo_config.steps
  assert order[0] == 'pretrain'
  for name in order:
    step = steps[name]
    if step.task != 'net':
      assert step.config.task == step.task, name
    if step.task == 'detect':
      if step.config.net != 'pretrained':
        assert order.index(f'net_{step.config.net}') < order.index(name)
    if step.task in ('classify', 'analyze'):
      # Every finetuned net the step reads was trained by an earlier step.
      for net in step.config.nets.finetune:
        assert order.index(f'net_{net}') < order.index(name), (name, net)
  # Every seed table and figure has a step that produces it.
  products = {p for n in order for p in steps[n].produces}
  assert products == {spec.product for spec in report.TABLES + report.FIGURES}


def test_demo_runs_the_full_grid_unless_reduced():
  assert _study_config('runlocal').det_grid == 'full'
  assert 'net_fiftyfifty' in _study_config('runlocal').order
  config = _study_config('runlocal,det_grid=reduced')
  detect = [n for n in config.order if n.startswith('detect_')]
  assert config.det_grid == 'reduced'
  assert {config.steps[n].config.net for n in detect} == {'pretrained', 'ft'}
  assert 'detect_ft_pool5_spmax' in detect
  assert 'net_fiftyfifty' not in config.order  # only detection uses it
  # The demo facts the report cites come from the configs themselves.
  assert config.demo.pretrain_steps == config.steps.pretrain.config.total_steps
  assert config.demo.input_size == (
      config.steps.net_ft.config.nets.input_size)


def test_full_scale_needs_pretrained_and_extracts_each_net_once():
  with pytest.raises(ValueError, match='pretrained='):
    _study_config('devkit_dir=/voc')
  config = _study_config('devkit_dir=/voc,pretrained=/p,sun397_dir=/sun')
  assert 'pretrain' not in config.order
  layers = {config.steps[n].config.net: config.steps[n].config.extract.layers
            for n in config.order if n.startswith('detect_')}
  assert layers == {'pretrained': ('pool5', 'fc7'),
                    'ft': ('pool5', 'fc6', 'fc7'), 'fcft': ('fc6', 'fc7'),
                    'fiftyfifty': ('pool5', 'fc7')}
  assert config.steps.sun397_ft.config.init_from == '/p'
  probe = config.steps.sun397_pretrained.config
  assert (probe.nets.pretrained, probe.input.dataset, probe.input.data_dir) == (
      '/p', 'sun397', '/sun')
  assert config.steps.net_ft.config.data.devkit_dir == '/voc'
  pretrain = _study_config('pretrained=/p,pretrain').steps.pretrain
  assert (pretrain.workdir, pretrain.config.total_steps) == ('/p', 310_000)


def test_select_by_name_group_and_product(demo_config):
  def selected(**kw):
    return study.select(ml_collections.ConfigDict(
        {**demo_config.to_dict(), **kw}))
  assert selected(only=('table2.4',)) == ['gtbox_cls']
  assert selected(only=('net',)) == ['net_ft', 'net_fcft', 'net_fiftyfifty']
  assert selected(only=('fig4-1', 'sun397_fcft')) == [
      'pretrain', 'sun397_fcft', 'analyses_dynamics']
  left = selected(skip=('detect', 'analyses', 'pretrain'))
  assert left == ['net_ft', 'net_fcft', 'net_fiftyfifty', 'sun397_pretrained',
                  'sun397_ft', 'sun397_fcft', 'gtbox_cls',
                  'pascal_cls_ablations', 'pascal_cls_snapshots']
  assert selected(only=('sun397',)) == ['sun397_pretrained', 'sun397_ft',
                                        'sun397_fcft']
  with pytest.raises(ValueError, match="'table9.9' matches no step.*groups"):
    selected(only=('table9.9',))


def test_rerun_redoes_only_unfinished_steps(tmp_path, recorder):
  config = _toy_config()
  result = study.run(config, str(tmp_path))
  assert _ran(recorder) == ['a', 'b', 'c'] and result['skipped'] == []
  marker = json.loads((tmp_path / 'study/done/b.json').read_text())
  assert marker['fingerprint'] == study.fingerprint(config.steps.b)

  recorder.calls.clear()
  assert study.run(config, str(tmp_path))['ran'] == []
  assert _ran(recorder) == []

  # A lost marker, and a step whose config changed, run again; nothing else.
  os.remove(tmp_path / 'study/done/b.json')
  config.steps.c.config.extra = 1
  study.run(config, str(tmp_path))
  assert _ran(recorder) == ['b', 'c']
  # The report lists the plan's steps with their status.
  text = (tmp_path / 'report/index.md').read_text()
  assert '| b | step b | done (' in text


def test_interrupted_study_resumes_at_the_interrupted_step(tmp_path, recorder,
                                                          monkeypatch):
  config = _toy_config()
  calls = recorder.task('train')

  def interrupted(config, workdir):
    calls(config, workdir)
    if config.label == 'b':
      raise KeyboardInterrupt
  monkeypatch.setattr(tasks, 'get_task', lambda name: interrupted)
  with pytest.raises(KeyboardInterrupt):
    study.run(config, str(tmp_path))
  assert sorted(os.listdir(tmp_path / 'study/done')) == ['a.json']
  monkeypatch.setattr(tasks, 'get_task', recorder.task)
  recorder.calls.clear()
  study.run(config, str(tmp_path))
  assert _ran(recorder) == ['b', 'c']


def test_failed_step_is_recorded_and_the_others_run(tmp_path, recorder):
  recorder.fail = {'b'}
  with pytest.raises(RuntimeError, match='1 steps failed.*b: ValueError: '
                     'b broke'):
    study.run(_toy_config(), str(tmp_path))
  assert _ran(recorder) == ['a', 'b', 'c']
  failed = json.loads((tmp_path / 'study/failed/b.json').read_text())
  assert failed['error'] == 'ValueError: b broke'
  assert '**failed**: ValueError: b broke' in (
      tmp_path / 'report/index.md').read_text()

  recorder.fail, recorder.calls = set(), []
  study.run(_toy_config(), str(tmp_path))
  assert _ran(recorder) == ['b']
  assert not (tmp_path / 'study/failed/b.json').exists()

  recorder.fail = {'a'}
  with pytest.raises(ValueError, match='a broke'):
    study.run(_toy_config(keep_going=False, order=('a',)), str(tmp_path / 'x'))


def test_demo_steps_reach_their_tasks(tmp_path, demo_config, recorder):
  config = ml_collections.ConfigDict(demo_config.to_dict())
  config.only = ('net_fcft', 'sun397_pretrained', 'sun397_ft',
                 'detect_fiftyfifty_fc7')
  study.run(config, str(tmp_path))
  ((net, net_config, net_dir), (classify, probe, probe_dir),
   (train, sun, sun_dir), (detect, det, det_dir)) = recorder.calls
  assert (net, net_config.net, net_dir) == ('net', 'fcft', str(tmp_path))
  # The probe sees the finetunings' data and preprocessing, from the
  # pretrained net they start from.
  assert (classify, probe.eval, probe_dir) == (
      'classify', 'sun397', str(tmp_path / 'sun397' / 'pretrained'))
  assert probe.input == sun.input
  assert probe.nets.pretrained == sun.init_from
  assert (train, sun.input.dataset, sun_dir) == (
      'train', 'demo', str(tmp_path / 'sun397' / 'ft'))
  assert sun.eval.final_split == 'test'
  assert (detect, det.net, det.layer, det_dir) == (
      'detect', 'fiftyfifty', 'fc7', str(tmp_path))
  plan = json.loads((tmp_path / 'study/study.json').read_text())
  assert plan['runlocal'] and plan['args'] == 'runlocal,det_grid=full'
  assert [s['name'] for s in plan['steps'] if s['selected']] == list(
      config.only)


@pytest.mark.slow
def test_reduced_demo_study_writes_a_complete_report(tmp_path):
  """A real `:runlocal` study of Table 5.1 and fig 4-1 (demo pretraining
  cached after the first run: ~4 min), then a resume after losing a step."""
  config = _study_config('runlocal,only=table5.1+fig4-1')
  workdir = str(tmp_path / 'study')
  result = study.run(config, workdir)
  assert result['ran'] == ['pretrain', 'analyses_dynamics',
                           'pascal_cls_ablations']
  text = open(result['report']).read()
  for spec in report.TABLES:
    assert f'## Table {spec.table}:' in text
  for spec in report.FIGURES:
    assert f'## Figure {spec.figure}:' in text
  assert 'not comparable with the paper' in text
  assert '| Table 5.1 | complete |' in text
  assert '| Figure 4-1 | complete |' in text
  assert os.path.exists(os.path.join(workdir, 'report/figures/'
                                     'fig4-1_dynamics.png'))
  # Every other item is listed as missing with the command producing it.
  assert ('only=table2.4 --workdir' in text and
          '| Table 2.4 | missing |' in text)
  # Ours beside the paper's, from the task's own table.
  ours = report.read_csv_table(os.path.join(
      workdir, 'classify/pascal_cls/by_ablation/map.csv'))
  with open(os.path.join(workdir, 'report/tables/table_5_1.csv')) as f:
    pairs = {(r[0], r[1]): (r[2], r[3]) for r in map(
        lambda line: line.rstrip('\n').split(','), f.readlines()[1:])}
  assert pairs['pool5', 'unroll'] == (f'{ours["pool5", "unroll"]:g}', '65.6')

  # Lose one step (marker and outputs): only that step runs again.
  os.remove(os.path.join(workdir, 'study/done/analyses_dynamics.json'))
  shutil.rmtree(os.path.join(workdir, 'analyses/dynamics'))
  again = study.run(config, workdir)
  assert again['ran'] == ['analyses_dynamics']
  assert again['skipped'] == ['pretrain', 'pascal_cls_ablations']
  assert os.path.exists(os.path.join(workdir,
                                     'analyses/dynamics/fig4-1_dynamics.png'))


def test_eta_scales_expected_times_by_the_measured_speed(capsys):
  progress = study._Progress({'a': 10.0, 'b': 10.0, 'c': 20.0})
  progress.start(0, ['a', 'b', 'c'], 'first')
  assert 'step 1/3 a (first); 0:00:00 elapsed, ETA 0:00:40' in (
      capsys.readouterr().out)
  progress.finish('a', 0.5)   # cached: says nothing of speed
  progress.start(1, ['a', 'b', 'c'], 'second')
  assert 'ETA 0:00:30' in capsys.readouterr().out
  progress.finish('b', 20.0)  # twice as slow as expected
  progress.start(2, ['a', 'b', 'c'], 'third')
  assert capsys.readouterr().out.strip().endswith('ETA 0:00:40')


def test_the_mean_image_reaches_every_net_trained_or_read():
  """Imported weights come with Caffe's mean image: the finetunings train on
  inputs minus that mean, as every feature is extracted with it."""
  config = _study_config('devkit_dir=/d,pretrained=/p,mean_path=/m.npy,'
                         'sun397_dir=/s')
  steps = config.steps
  for mode in ('ft', 'fcft', 'fiftyfifty'):
    nets = steps[f'net_{mode}'].config.nets
    assert nets.mean_path == '/m.npy'
    assert nets.finetune[mode].input.mean_path == '/m.npy'
  for name in ('sun397_ft', 'sun397_fcft', 'sun397_pretrained'):
    assert steps[name].config.input.mean_path == '/m.npy'
