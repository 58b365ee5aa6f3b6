"""Training losses as pure functions of summed answer log-probs: SFT, DMPO (DPO is K=1), S-DPO.

Shapes: B users, K negatives. `*_chosen` is [B] (one prompt per user) or [B, K] (the paper's
data: every negative i comes with its own prompt x_i, so the chosen answer y_w,i differs too);
`*_rejected` is [B, K]; `mask` [B, K] marks real negatives (False = padding for users with
fewer than K). Every loss returns per-example values; the caller takes the mean.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class PreferenceOutput:
    loss: torch.Tensor  # [B]
    chosen_rewards: torch.Tensor  # [B]    beta * mean_i log(pi/ref)(y_w,i | x_i), detached
    rejected_rewards: (
        torch.Tensor
    )  # [B, K] beta * log(pi/ref)(y_l,i | x_i), detached; 0 where masked
    mask: torch.Tensor  # [B, K] real negatives

    @property
    def margin(self) -> torch.Tensor:
        """[B] chosen reward minus the mean rejected reward."""
        return self.chosen_rewards - _masked_mean(self.rejected_rewards, self.mask)

    @property
    def accuracy(self) -> torch.Tensor:
        """[B] share of real negatives whose reward is below the chosen reward."""
        wins = (self.rejected_rewards < self.chosen_rewards[:, None]) & self.mask
        return wins.sum(-1) / self.mask.sum(-1)


def _check(chosen: torch.Tensor, rejected: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if rejected.dim() != 2:
        raise ValueError(f"rejected log-probs must be [B, K], got shape {tuple(rejected.shape)}")
    if chosen.shape not in (rejected.shape[:1], rejected.shape):
        raise ValueError(
            f"chosen log-probs must be [B] or [B, K]; got {tuple(chosen.shape)} "
            f"for rejected {tuple(rejected.shape)}"
        )
    if mask is None:
        mask = torch.ones_like(rejected, dtype=torch.bool)
    if mask.shape != rejected.shape:
        raise ValueError(
            f"mask shape {tuple(mask.shape)} != rejected shape {tuple(rejected.shape)}"
        )
    if not mask.any(-1).all():
        raise ValueError("every example needs at least one real negative (a mask row is all False)")
    return mask


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum(-1) / mask.sum(-1)


def dmpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float = 0.1,
    mask: torch.Tensor | None = None,
) -> PreferenceOutput:
    """Direct Multi-Preference Optimization (Bai et al. 2024, eq. 3), per example:

        L = -log sigmoid( beta * log[pi(y_w|x)/ref(y_w|x)]
                          - (1/k) * sum_i beta * log[pi(y_l,i|x_i)/ref(y_l,i|x_i)] )

    With [B, K] chosen log-probs (one prompt x_i per negative, as in the paper's data) the chosen
    term is the mean of the k chosen log-ratios, (1/k) sum_i beta*log[pi(y_w,i|x_i)/ref(y_w,i|x_i)];
    it equals the formula whenever the k prompts coincide. Masked negatives are left out of both
    means. With K = 1 this is exactly DPO.
    """
    mask = _check(policy_chosen, policy_rejected, mask)
    chosen_ratio = policy_chosen - ref_chosen
    if chosen_ratio.dim() == 2:
        chosen_ratio = _masked_mean(chosen_ratio, mask)
    rejected_ratio = (policy_rejected - ref_rejected).masked_fill(~mask, 0.0)
    logits = beta * chosen_ratio - beta * _masked_mean(rejected_ratio, mask)  # eq. 3, inside sigma
    return _output(-F.logsigmoid(logits), beta * chosen_ratio, beta * rejected_ratio, mask)


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float = 0.1,
) -> PreferenceOutput:
    """DPO (Rafailov et al. 2023) on [B] log-probs: -log sigmoid(beta*(r_w - r_l)); DMPO with K=1."""
    return dmpo_loss(
        policy_chosen, policy_rejected[:, None], ref_chosen, ref_rejected[:, None], beta
    )


def sdpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float = 0.1,
    mask: torch.Tensor | None = None,
) -> PreferenceOutput:
    """S-DPO (Chen et al. 2024), per example, with r = log pi/ref:

        L = -log sigmoid( -log sum_j exp( beta*r(y_l,j) - beta*r(y_w) ) )

    With [B, K] chosen log-probs each negative j is compared with the chosen answer of its own
    prompt x_j: exp(beta*r(y_l,j|x_j) - beta*r(y_w,j|x_j)); identical to the formula when the
    prompts coincide. Masked negatives drop out of the sum. With K = 1 this is exactly DPO.
    """
    mask = _check(policy_chosen, policy_rejected, mask)
    chosen_ratio = policy_chosen - ref_chosen
    per_neg_chosen = (
        chosen_ratio if chosen_ratio.dim() == 2 else chosen_ratio[:, None].expand_as(mask)
    )
    rejected_ratio = policy_rejected - ref_rejected
    diffs = (beta * rejected_ratio - beta * per_neg_chosen).masked_fill(~mask, float("-inf"))
    loss = -F.logsigmoid(-torch.logsumexp(diffs, dim=-1))
    chosen_reward = beta * (
        _masked_mean(per_neg_chosen, mask) if chosen_ratio.dim() == 2 else chosen_ratio
    )
    return _output(loss, chosen_reward, beta * rejected_ratio.masked_fill(~mask, 0.0), mask)


def _output(
    loss: torch.Tensor, chosen: torch.Tensor, rejected: torch.Tensor, mask: torch.Tensor
) -> PreferenceOutput:
    return PreferenceOutput(loss, chosen.detach(), rejected.detach(), mask)


def sft_loss(
    logps: torch.Tensor, n_tokens: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-example SFT negative log-likelihood, averaged over answer tokens: -sum log p / n_tokens.

    `logps` and `n_tokens` are [B] or [B, M] (summed log-prob and token count of each answer);
    with [B, M] an example's loss is its total NLL over its total answer tokens.
    """
    if logps.dim() == 1:
        return -logps / n_tokens.clamp(min=1)
    if mask is None:
        mask = n_tokens > 0
    return -(logps * mask).sum(-1) / (n_tokens * mask).sum(-1).clamp(min=1)


LOSSES = {"dmpo": dmpo_loss, "sdpo": sdpo_loss}
