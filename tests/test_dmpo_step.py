"""One DMPO micro-batch on the tiny model, batch in, loss and logs out (stages/dmpo.py's dmpo_step),
with the batch made as training makes it: reference log-probs scored with the adapter disabled
(reference.py), groups and reference collated (collate.collate_preferences).

At the start of DMPO the new adapter's B matrices are zero, so the policy is the reference and
every log-ratio r = log pi/ref is 0. By hand, for a user with P real pairs:
  DMPO:  L = -log sigmoid(beta * 0 - beta * mean_i 0) = log 2; rewards and margin 0
  S-DPO: L = -log sigmoid(-log sum_j exp(0)) = log(1 + P)
Here k = 2 and the second user has one negative only: P = 2, 1, 2.
"""

import math

import pytest
import torch

from dmporec.collate import collate_preferences, split_pairs
from dmporec.config import DMPOConfig
from dmporec.reference import reference_logps
from dmporec.scoring.forward import score_groups
from dmporec.stages.dmpo import dmpo_step


@pytest.fixture
def setup(three_user_groups):
    """(policy, batch) for 3 users, k=2, the second with one negative."""
    policy, groups = three_user_groups
    ref = reference_logps(policy, groups, 4, layout="shared", batch_size=3, max_batch_tokens=8192)
    return policy, collate_preferences(list(zip(groups, ref, strict=True)))


def test_the_policy_starts_as_the_reference_dmpo(setup):
    policy, batch = setup
    loss, logs = dmpo_step(policy, batch, DMPOConfig(k=2, beta=0.1))
    assert loss.item() == pytest.approx(math.log(2), abs=1e-5)
    assert logs["reward_margin"] == pytest.approx(0, abs=1e-5)
    assert logs["chosen_reward"] == pytest.approx(0, abs=1e-5)


def test_the_policy_starts_as_the_reference_sdpo(setup):
    policy, batch = setup
    loss, _ = dmpo_step(policy, batch, DMPOConfig(k=2, beta=0.1, loss="sdpo"))
    want = (math.log(3) + math.log(2) + math.log(3)) / 3  # the short user's missing pair drops out
    assert loss.item() == pytest.approx(want, abs=1e-5)


def test_the_sft_term_adds_the_chosen_answers_nll_per_token(setup):
    """sft_weight w adds w * (each user's NLL of its chosen answers over their tokens), read
    here from the naive layout (one row per answer) over the real pairs only."""
    policy, batch = setup
    plain, _ = dmpo_step(policy, batch, DMPOConfig(k=2))
    with_sft, _ = dmpo_step(policy, batch, DMPOConfig(k=2, sft_weight=0.5))
    naive = score_groups(policy, batch.groups, layout="naive")
    logps, tokens = split_pairs(naive.logps)[0], split_pairs(naive.n_tokens)[0]
    nll = [
        -logps[u, : g.n_answers // 2].sum() / tokens[u, : g.n_answers // 2].sum()
        for u, g in enumerate(batch.groups)
    ]
    assert (with_sft - plain).item() == pytest.approx(0.5 * sum(nll).item() / 3, rel=1e-4)


def test_steps_on_its_loss_raise_the_reward_margin(setup):
    """Learning: a few AdamW steps on dmpo_step's loss (the reference fixed in the batch) move the
    policy from the reference towards the chosen answers."""
    policy, batch = setup
    tc = DMPOConfig(k=2, beta=0.1)
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    policy.train()
    first, _ = dmpo_step(policy, batch, tc)
    for _ in range(8):
        loss, logs = dmpo_step(policy, batch, tc)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    last, logs = dmpo_step(policy, batch, tc)
    assert last.item() < first.item() / 2  # log 2 -> about 0.17 on this batch
    assert logs["reward_margin"] > 0 and logs["reward_accuracy"] > 0.5
    assert not batch.ref_logps.requires_grad  # the reference never moves
