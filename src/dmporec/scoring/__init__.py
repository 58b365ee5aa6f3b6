"""Summed log-probabilities of answers given their prompts, for groups of answers sharing a prompt.

A `Group` is one user's prompt tree: a shared prefix (chat template, role line, history), then
branches (one per candidate pair: the line naming the two candidates and the template's
assistant header), each with its answers (chosen, rejected). `score_groups` returns the summed
log-prob of every answer, shape [B, M] with M = answers per group in branch order.

Three layouts compute the same numbers:
- "naive": one row per answer holding prefix + context + answer, as the peers do
  (LLaMA-Factory, TRL): the prefix is encoded once per answer.
- "shared": one packed row per group holding the token trie of its sequences (prefix +
  context + answer): every distinct prompt prefix is encoded once, so the prefix is shared by
  all branches, and the leading tokens that branches' contexts or a branch's answers have in
  common (" . Rank the likelihood ...  <Title:", " <Title:") are shared too. A block attention
  mask (each token sees its ancestors and the earlier tokens of its own segment) and position
  ids equal to each token's depth give every answer token exactly the context it has in the
  naive row; gradients flow through every shared token as usual. An answer token shared by
  several answers is scored once and added to each of them. The stem, the leading tokens all
  rows of a call start with (chat template, system prompt, the instruction's first words), is
  encoded once per call and its keys and values copied into each row's KV cache; the rows
  hold the trie after it (the stem's gradient is the sum over the rows that share it). Under
  gradient checkpointing, whose replay drops the KV cache, each row encodes the stem itself.
- "cached": "shared" with the rest of each row's first segment (the user's history) encoded
  in a pass of its own with plain causal attention into the KV cache (no mask: the attention
  kernels skip the masked half); the rest of the trie (pair lines, answers) then attends to
  that cache under the block mask. The same tokens as "shared", one more forward pass.

Modules: trie.py (the token trie and the packing of rows; pure Python), masks.py (the block
attention masks), forward.py (the forward passes and `score_groups`).
"""

from typing import Any

from dmporec.scoring.trie import LAYOUTS, Branch, Group, Layout, Tokens, length_order

__all__ = [
    "LAYOUTS",
    "AnswerLogProbs",
    "Branch",
    "Group",
    "Layout",
    "Tokens",
    "length_order",
    "score_groups",
]


def __getattr__(name: str) -> Any:
    # The forward passes need torch; the trie does not, so importing it stays light.
    if name in ("AnswerLogProbs", "score_groups"):
        from dmporec.scoring import forward

        return getattr(forward, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
