"""`python -m resnet_jax.models.table`: README's zoo figures from shapes alone, in seconds."""

import pytest

from resnet_jax.models import table as model_table
from resnet_jax.common.errors import UserError

# Exact parameter counts (../shared/REFERENCES.md: the paper's CIFAR nets with option A, 10 classes;
# torchvision's ImageNet nets, 1000 classes) and multiply-adds as README's table rounds them.
EXPECTED = {
    'resnet20': (269_722, '40.6 M'),
    'resnet56': (853_018, '125.5 M'),
    'resnet1202': (19_421_274, '2.83 G'),
    'resnet50': (25_557_032, '4.09 G'),
}


def table_rows(text):
  """{model: [cells]} of a Markdown table."""
  rows = [line.strip('|').split(' | ') for line in text.splitlines()[2:]]
  return {cells[0].strip(): [c.strip() for c in cells] for cells in rows}


def test_rows_match_the_references():
  rows = [model_table.default_row(name) for name in EXPECTED]
  table = table_rows(model_table.markdown_table(rows))
  for name, (params, macs) in EXPECTED.items():
    assert table[name][5:] == [f'{params:,}', macs], name
  assert table['resnet50'][1:5] == ['50', 'bottleneck', 'projection', '224x224x3']


def test_multiply_adds_exact():
  # 16 + 3 stages x 2n convs of 3x3 at 16/32/64 channels (x 32^2/16^2/8^2) and the 64x10 head.
  n, hw = 3, 32 * 32
  convs = 27 * 16 * hw + 2 * n * 9 * 16 * 16 * hw  # stem, stage 1
  convs += (9 * 16 * 32 + (2 * n - 1) * 9 * 32 * 32) * hw // 4  # stage 2
  convs += (9 * 32 * 64 + (2 * n - 1) * 9 * 64 * 64) * hw // 16  # stage 3
  assert model_table.row('resnet20', 10, (32, 32, 3)).multiply_adds == convs + 64 * 10


def test_options(capsys):
  status = model_table.main(
      ['--models', 'resnet20,resnet8', '--input', '28x28x1', '--num_classes', '7']
  )
  table = table_rows(capsys.readouterr().out)
  assert status == 0 and list(table) == ['resnet20', 'resnet8']
  assert table['resnet8'][4] == '28x28x1'
  # 7 classes and 1 channel: 269,722 less 3 x 65 head parameters, less 2 x 9 x 16 stem weights.
  assert table['resnet20'][5] == f'{269_722 - 3 * 65 - 2 * 9 * 16:,}'


def test_unknown_model_is_one_line_with_a_suggestion(capsys):
  assert model_table.main(['--models', 'resnet20,reznet56']) == 2
  err = capsys.readouterr().err
  assert err.startswith('error: ') and err.count('\n') == 1 and 'did you mean resnet56?' in err
  with pytest.raises(UserError, match='HxWxC'):
    model_table.parse_input('32x32')
