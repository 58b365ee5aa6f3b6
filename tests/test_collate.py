"""DMPO's collate function: groups and their reference log-probs -> one batch whose reference
columns line up with the policy's scores (collate.collate_preferences)."""

import torch

from dmporec.collate import collate_preferences
from dmporec.reference import reference_logps
from dmporec.scoring import Branch, Group
from dmporec.scoring.forward import score_groups


def _group(pairs: int) -> Group:
    """A hand-built group of `pairs` branches, two answers each (tokens do not matter here)."""
    return Group((1, 2), tuple(Branch((3,), ((4,), (5,))) for _ in range(pairs)))


def test_the_docstring_example():
    g0, g1 = _group(2), _group(1)
    ref0 = torch.tensor([-4.1, -6.0, -3.9, -5.2])
    ref1 = torch.tensor([-4.4, -5.8, 0.0, 0.0])  # one pair: zeros where it has no answers
    batch = collate_preferences([(g0, ref0), (g1, ref1)])
    assert batch.groups == [g0, g1]
    assert torch.equal(batch.ref_logps, torch.stack([ref0, ref1]))
    # Two short users: the batch is as wide as their answers, not as the reference rows.
    batch = collate_preferences([(g1, ref1), (_group(1), ref1)])
    assert torch.equal(batch.ref_logps, torch.stack([ref1[:2], ref1[:2]]))


def test_the_reference_lines_up_with_the_policy_column_by_column(three_user_groups):
    """Reference log-probs of 3 users (one with a single negative), scored as DMPO scores them
    before training, collated in another order: each row equals the adapter-disabled scores of
    the batch's groups, in the columns the policy's scores of the same batch use."""
    policy, groups = three_user_groups
    ref = reference_logps(
        policy, groups, 4, layout="shared", batch_size=2, max_batch_tokens=8192
    )  # [3, 2 pairs x 2 answers]
    for order in ([2, 1, 0], [1]):
        batch = collate_preferences([(groups[i], ref[i]) for i in order])
        with torch.no_grad(), policy.disable_adapter():
            want = score_groups(policy, batch.groups)
        assert batch.ref_logps.shape == want.logps.shape
        assert torch.allclose(batch.ref_logps, want.logps, atol=1e-5)
        assert torch.equal(batch.ref_logps != 0, want.mask)  # zeros where no answer is
