"""The token trie and the packing of rows, without a model (dmporec.scoring.trie is pure Python)."""

import subprocess
import sys

import pytest

from dmporec.scoring.trie import Branch, Group, micro_batches, pack_rows, segments

# The worked example of the trie module's docstring.
EXAMPLE = Group((1, 2, 3), (Branch((4, 5), ((6, 7), (8, 7))), Branch((9,), ((6,),))))


def test_segments_of_the_worked_example():
    got = [(tokens, parent) for tokens, _, parent in segments(EXAMPLE)]
    assert got == [([1, 2, 3], -1), ([4, 5], 0), ([6, 7], 1), ([8, 7], 1), ([9, 6], 0)]
    slots = [s for _, s, _ in segments(EXAMPLE)]
    assert slots[2] == [[0], [0]] and slots[3] == [[1], [1]] and slots[4] == [[], [2]]
    assert EXAMPLE.tokens("shared") == 11
    assert EXAMPLE.tokens("naive") == 7 + 7 + 5


def test_packed_row_positions_segments_and_targets():
    (row,) = pack_rows([EXAMPLE], "shared", width=3)
    assert row.ids == [1, 2, 3, 4, 5, 6, 7, 8, 7, 9, 6]
    assert row.pos == [0, 1, 2, 3, 4, 5, 6, 5, 6, 3, 4]
    assert row.seg == [0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert row.parents == [-1, 0, 1, 1, 0]
    assert row.first == 3
    # (predicting row index, target token, answer slot): token 8 is predicted from token 5
    # (row index 4, its parent's end), the 6 of branch 1 from the 9 (row index 9).
    assert sorted(row.targets) == [(4, 6, 0), (4, 8, 1), (5, 7, 0), (7, 7, 1), (9, 6, 2)]


def test_naive_rows_repeat_the_prompt_per_answer():
    rows = pack_rows([EXAMPLE, EXAMPLE], "naive", width=3)
    assert [r.ids for r in rows[:3]] == [
        [1, 2, 3, 4, 5, 6, 7],
        [1, 2, 3, 4, 5, 8, 7],
        [1, 2, 3, 9, 6],
    ]
    assert rows[2].targets == [(3, 6, 2)]
    assert rows[5].targets == [(3, 6, 5)]  # group 1's slots start at width


def test_an_answer_needs_a_prompt_token():
    with pytest.raises(ValueError, match="prompt token"):
        pack_rows([Group((), (Branch((), ((5,),)),))], "shared", width=1)


@pytest.mark.parametrize(
    ("lengths", "budget", "runs"),
    [
        ([10, 10, 10, 10], 1000, [(0, 4)]),  # all fit in one pass
        ([10, 10, 10, 10], 20, [(0, 2), (2, 4)]),  # the budget cuts every 2 rows
        ([500, 10, 10, 10], 10_000, [(0, 1), (1, 4)]),  # padding 3 x 490 costs more than a pass
        ([50, 49, 48], 10_000, [(0, 3)]),  # a little padding is cheaper than a pass
        ([3000, 10], 100, [(0, 1), (1, 2)]),  # a row longer than the budget goes alone
    ],
)
def test_micro_batches_split_where_padding_costs_more_than_a_pass(lengths, budget, runs):
    assert micro_batches(lengths, budget) == runs


def test_the_trie_imports_without_torch():
    code = "import sys, dmporec.scoring.trie, dmporec.config; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
