"""The paper's numbers as data: spot checks against the seed text."""

import pytest

from cnnjax.reporting import paper


def test_every_table_is_present_with_its_size():
  sizes = {t: len(paper.paper_table(t)) for t in paper.TABLES}
  # 2.3: 7 rows x 21 columns; 3.1: 4 x 20; 4.1: 7 layers x 8 snapshots.
  assert sizes == {'2.1': 84, '2.2': 6, '2.3': 147, '2.4': 16, '3.1': 80,
                   '4.1': 56, '4.2': 84, '5.1': 26, '5.2': 63}


def test_spot_values():
  assert paper.paper_table('2.3')[('fc7/ft', 'mAP')] == 54.1
  assert paper.paper_table('2.3')[('pool5/pretrained', 'aeroplane')] == 51.9
  assert paper.paper_table('2.1')[('fc7', 'weighted@0.1')] == 20.58
  assert paper.paper_table('2.4')[('fc7', 'fcft')] == 83.44
  assert paper.paper_table('3.1')[('pretrained@90', 'cow')] == 100
  assert paper.paper_table('4.1')[('pool5', '310000')] == 65.6
  assert paper.paper_table('5.1')[('pool1', 'sp-max-bin')] == 9.0
  assert ('pool2', 'sp-max-bin') not in paper.paper_table('5.1')
  assert paper.paper_table('5.2')[('pool5/sp-max', 'mAP')] == 25.4


def test_table_means_match_reported_map():
  # The per-class numbers of Table 2.3 average to the printed mAP (+-0.05).
  table = paper.paper_table('2.3')
  for row in ('pool5/ft', 'fc7/ft', 'fc7/fcft'):
    per_class = [v for (r, c), v in table.items() if r == row and c != 'mAP']
    assert len(per_class) == 20
    assert sum(per_class) / 20 == pytest.approx(table[(row, 'mAP')], abs=0.06)


def test_unknown_table():
  with pytest.raises(ValueError, match='9.9'):
    paper.paper_table('9.9')
