"""Losses against values worked out by hand.

DMPO, one user, beta = 0.5, K = 2:
  policy chosen -1, ref chosen -2        -> chosen log-ratio  +1
  policy rejected [-3, -5], ref [-2, -4] -> rejected log-ratios [-1, -1], mean -1
  logit = 0.5 * 1 - 0.5 * (-1) = 1       -> loss = -log sigmoid(1) = log(1 + e^-1) = 0.313262
"""

import math

import pytest
import torch

from dmporec.losses import dmpo_loss, dpo_loss, sdpo_loss, sft_loss


def t(*x):
    return torch.tensor(x, dtype=torch.float64)


def test_dmpo_hand_computed():
    out = dmpo_loss(t(-1.0), t(-3.0, -5.0)[None], t(-2.0), t(-2.0, -4.0)[None], beta=0.5)
    assert out.loss.item() == pytest.approx(math.log1p(math.exp(-1.0)), abs=1e-12)
    assert out.chosen_rewards.item() == pytest.approx(0.5)
    assert out.rejected_rewards.tolist() == [[-0.5, -0.5]]
    assert out.margin.item() == pytest.approx(1.0)
    assert out.accuracy.item() == 1.0


def test_dpo_hand_computed():
    # logit = 0.1 * ((-1 - -2) - (-3 - -1)) = 0.3
    out = dpo_loss(t(-1.0), t(-3.0), t(-2.0), t(-1.0), beta=0.1)
    assert out.loss.item() == pytest.approx(-math.log(1 / (1 + math.exp(-0.3))), abs=1e-12)


def test_k1_dmpo_equals_dpo_and_sdpo():
    g = torch.Generator().manual_seed(0)
    pc, rc = torch.randn(5, generator=g), torch.randn(5, generator=g)
    pr, rr = torch.randn(5, generator=g), torch.randn(5, generator=g)
    dpo = dpo_loss(pc, pr, rc, rr, 0.3).loss
    assert torch.allclose(dmpo_loss(pc, pr[:, None], rc, rr[:, None], 0.3).loss, dpo)
    assert torch.allclose(sdpo_loss(pc, pr[:, None], rc, rr[:, None], 0.3).loss, dpo)


def test_permuting_negatives_changes_nothing():
    g = torch.Generator().manual_seed(1)
    pc, rc = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    pr, rr = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    perm = torch.tensor([2, 0, 3, 1])
    for fn in (dmpo_loss, sdpo_loss):
        a = fn(pc, pr, rc, rr, 0.1).loss
        b = fn(pc[:, perm], pr[:, perm], rc[:, perm], rr[:, perm], 0.1).loss
        assert torch.allclose(a, b)


def test_per_prompt_chosen_equals_shared_chosen_when_prompts_coincide():
    pc, rc = t(-1.0, -2.0), t(-1.5, -1.0)
    pr, rr = t(-3.0, -4.0, -2.0, -5.0).view(2, 2), t(-2.0, -2.0, -2.0, -2.0).view(2, 2)
    for fn in (dmpo_loss, sdpo_loss):
        a = fn(pc, pr, rc, rr, 0.2).loss
        b = fn(pc[:, None].expand(2, 2), pr, rc[:, None].expand(2, 2), rr, 0.2).loss
        assert torch.allclose(a, b)


def test_gradient_signs():
    for fn in (dmpo_loss, sdpo_loss):
        pc = torch.tensor([-1.0], requires_grad=True)
        pr = torch.tensor([[-2.0, -3.0]], requires_grad=True)
        fn(pc, pr, torch.tensor([-1.0]), torch.tensor([[-2.0, -3.0]]), 0.1).loss.sum().backward()
        assert pc.grad.item() < 0  # descending the loss raises the chosen log-prob
        assert (pr.grad > 0).all()  # and lowers every rejected one


def test_masked_negatives_are_ignored():
    pc, rc = t(-1.0), t(-1.2)
    pr, rr = t(-3.0, 99.0, -4.0)[None], t(-2.5, -7.0, -3.0)[None]
    mask = torch.tensor([[True, False, True]])
    for fn in (dmpo_loss, sdpo_loss):
        full = fn(pc, pr, rc, rr, 0.1, mask)
        kept = fn(pc, pr[:, [0, 2]], rc, rr[:, [0, 2]], 0.1)
        assert torch.allclose(full.loss, kept.loss)
        assert full.rejected_rewards[0, 1] == 0
    with pytest.raises(ValueError, match="at least one real negative"):
        dmpo_loss(pc, pr, rc, rr, 0.1, torch.zeros(1, 3, dtype=torch.bool))


def test_sdpo_hand_computed():
    # beta 1, chosen ratio 0, rejected ratios [ln 2, ln 3] -> sum exp = 5 -> loss = -log sigmoid(-ln 5) = ln 6
    out = sdpo_loss(t(0.0), t(math.log(2), math.log(3))[None], t(0.0), t(0.0, 0.0)[None], 1.0)
    assert out.loss.item() == pytest.approx(math.log(6), abs=1e-12)


def test_bad_shapes_are_reported():
    with pytest.raises(ValueError, match=r"\[B, K\]"):
        dmpo_loss(t(1.0), t(1.0), t(1.0), t(1.0))


def test_sft_loss_is_token_mean_nll():
    assert sft_loss(t(-6.0, -2.0), torch.tensor([3, 2])).tolist() == [2.0, 1.0]
    logps, n = t(-6.0, -4.0, 0.0).view(1, 3), torch.tensor([[3, 1, 0]])
    assert sft_loss(logps, n).item() == pytest.approx(2.5)
