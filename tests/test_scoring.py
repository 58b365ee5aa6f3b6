"""The shared-prefix layouts (packed trie, and the trie behind a KV-cached prefix) must give the
naive layout's numbers, values and gradients."""

import pytest
import torch

from dmporec.collate import GroupEncoder
from dmporec.hf_compat import enable_checkpointing
from dmporec.losses import dmpo_loss
from dmporec.model import BUILTIN_SMOLLM2, ModelConfig, add_lora, load_base_model, load_tokenizer
from dmporec.prompts import ChatFormat
from dmporec.scoring import Branch, Group, score_groups


def groups_for(tok, records, ks):
    enc = GroupEncoder(tok, ChatFormat.from_tokenizer(tok))
    return [enc.group(r, k=k) for r, k in zip(records, ks, strict=True)]


def reference_sum(model, ids, n_answer):
    """Summed log-prob of the last n_answer tokens of one unpadded sequence, the textbook way."""
    logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].float()
    logp = torch.log_softmax(logits, -1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]
    return logp[-n_answer:].sum()


@torch.no_grad()
def test_naive_matches_a_plain_forward(tiny, demo):
    model, tok = tiny
    group = groups_for(tok, demo.train[:1], [2])[0]
    scores = score_groups(model, [group], layout="naive")
    b = group.branches[1]
    want = reference_sum(model, list(group.prefix + b.context + b.answers[0]), len(b.answers[0]))
    assert scores.logps[0, 2].item() == pytest.approx(want.item(), abs=1e-4)
    assert scores.n_tokens[0, 2].item() == len(b.answers[0])


SHARED = ["shared", "cached"]


@torch.no_grad()
@pytest.mark.parametrize("layout", SHARED)
@pytest.mark.parametrize("max_batch_tokens", [8192, 300])
def test_shared_equals_naive_for_k_1_to_5_with_padding(tiny, demo, max_batch_tokens, layout):
    model, tok = tiny
    # k = 1..5 in one batch: mixed lengths, rows padded, missing negatives masked.
    groups = groups_for(tok, demo.train[:5], [1, 2, 3, 4, 5])
    a = score_groups(model, groups, layout="naive", max_batch_tokens=max_batch_tokens)
    b = score_groups(model, groups, layout=layout, max_batch_tokens=max_batch_tokens)
    assert a.logps.shape == (5, 10)
    assert torch.equal(a.mask, b.mask) and torch.equal(a.n_tokens, b.n_tokens)
    assert a.mask.sum(1).tolist() == [2, 4, 6, 8, 10]
    assert torch.allclose(a.logps, b.logps, atol=1e-4, rtol=0)
    assert (a.logps[~a.mask] == 0).all() and (a.logps[a.mask] < 0).all()


@torch.no_grad()
@pytest.mark.parametrize("layout", SHARED)
def test_empty_context_and_handmade_groups(tiny, layout):
    model, _ = tiny
    groups = [
        Group((5, 6, 7), (Branch((), ((8, 9), (10,))), Branch((11,), ((12, 13, 14),)))),
        Group((3,), (Branch((4, 4), ((9,),)),)),
        # No common first token (the trie has two roots), and one answer with one token only.
        Group((), (Branch((3, 4), ((5,),)), Branch((6,), ((7, 8),)))),
        Group((9, 8, 7, 6), (Branch((), ((5,),)),)),  # one sequence: nothing after the prefix
    ]
    a = score_groups(model, groups, layout="naive")
    b = score_groups(model, groups, layout=layout)
    assert torch.allclose(a.logps, b.logps, atol=1e-4)
    assert a.n_tokens.tolist() == [[2, 1, 3], [1, 0, 0], [1, 2, 0], [1, 0, 0]]
    # Alone, the last group is one segment: "cached" runs its first pass only.
    alone = score_groups(model, groups[3:], layout=layout)
    assert torch.allclose(alone.logps[0], a.logps[3, :1], atol=1e-4)


@torch.no_grad()
@pytest.mark.parametrize("layout", SHARED)
def test_the_users_common_stem_is_encoded_once_per_call(tiny, demo, layout):
    model, tok = tiny
    groups = [
        Group((5, 6, 7, 8), (Branch((9,), ((10,), (11,))),)),
        Group((5, 6, 7), (Branch((), ((12,),)),)),  # one sequence: its first segment is all of it
        Group((5, 6), (Branch((), ((7,), (8,))),)),  # its first segment is the stem (5, 6) itself
    ]
    for batch in (groups, groups[:2], groups[1:2]):  # stems of 2, 3 and 4 tokens
        for max_batch_tokens in (8192, 4):  # one micro-batch, or one row each
            a = score_groups(model, batch, layout="naive")
            b = score_groups(model, batch, layout=layout, max_batch_tokens=max_batch_tokens)
            assert torch.allclose(a.logps, b.logps, atol=1e-4, rtol=0)
    assert [g.tokens(layout) for g in groups] == [7, 4, 4]
    assert score_groups(model, groups, layout=layout).encoded == 15 - 2 * 2
    # The demo prompts share the chat template and the instruction's first words.
    real = groups_for(tok, demo.train[:4], [2, 2, 2, 2])
    a = score_groups(model, real, layout="naive")
    b = score_groups(model, real, layout=layout, max_batch_tokens=600)
    assert torch.allclose(a.logps, b.logps, atol=1e-4, rtol=0)
    stem = next(i for i in range(99) if len({g.prefix[i] for g in real}) > 1)
    assert stem > 10 and b.encoded == sum(g.tokens(layout) for g in real) - 3 * stem
    assert a.encoded == sum(g.tokens("naive") for g in real)


@torch.no_grad()
@pytest.mark.parametrize("layout", SHARED)
def test_common_leading_tokens_are_encoded_once(tiny, layout):
    model, _ = tiny
    # Contexts share (7, 8); answers share leading tokens, one answer is a prefix of another,
    # and two answers are identical: each shared token is encoded once and counted for all.
    group = Group(
        (5, 6),
        (
            Branch((7, 8, 9), ((20, 21, 22), (20, 21), (20, 23))),
            Branch((7, 8, 10), ((20, 21, 22), (20, 21, 22))),
        ),
    )
    distinct = {
        seq[:i]
        for b in group.branches
        for a in b.answers
        for seq in [group.prefix + b.context + a]
        for i in range(1, len(seq) + 1)
    }
    assert group.tokens(layout) == len(distinct) == 13
    a = score_groups(model, [group], layout="naive")
    b = score_groups(model, [group], layout=layout)
    assert torch.allclose(a.logps, b.logps, atol=1e-4, rtol=0)
    assert b.n_tokens.tolist() == [[3, 2, 2, 3, 3]]
    assert b.logps[0, 3] == b.logps[0, 4]


@torch.no_grad()
@pytest.mark.parametrize("layout", SHARED)
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_sliding_window_layers_see_only_their_window(tiny, demo, attention, layout):
    # A Qwen3 whose first layer attends to the last 8 positions only (as Gemma 3's local
    # layers do with 512): the shared layout must window by depth, not by packed row index.
    from transformers import AutoModelForCausalLM

    _, tok = tiny
    config = tiny[0].config.__class__.from_dict(
        {
            **tiny[0].config.to_dict(),
            "use_sliding_window": True,
            "sliding_window": 8,
            "layer_types": ["sliding_attention", "full_attention"],
        }
    )
    config._attn_implementation = attention
    model = AutoModelForCausalLM.from_config(config).eval()
    model.load_state_dict(tiny[0].state_dict())
    groups = groups_for(tok, demo.train[:3], [3, 1, 2])
    a = score_groups(model, groups, layout="naive")
    b = score_groups(model, groups, layout=layout)
    assert torch.allclose(a.logps, b.logps, atol=1e-4, rtol=0)
    unwindowed = score_groups(tiny[0], groups, layout="naive")
    assert not torch.allclose(a.logps, unwindowed.logps, atol=1e-2)  # the window matters


def test_dmpo_gradients_agree(tiny_cfg, demo):
    tok = load_tokenizer(tiny_cfg)
    grads = {}
    for layout in ("naive", *SHARED):
        torch.manual_seed(0)
        model = add_lora(load_base_model(tiny_cfg), tiny_cfg)
        for name, p in model.named_parameters():  # LoRA B starts at zero; make the test non-trivial
            if "lora_B" in name:
                p.data.normal_(0, 0.02)
        groups = groups_for(tok, demo.train[:3], [3, 1, 2])
        s = score_groups(model, groups, layout=layout)
        with torch.no_grad(), model.disable_adapter():
            ref = score_groups(model, groups, layout=layout).logps
        dmpo_loss(
            s.logps[:, 0::2], s.logps[:, 1::2], ref[:, 0::2], ref[:, 1::2], 0.1, s.mask[:, 1::2]
        ).loss.mean().backward()
        grads[layout] = torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])
    assert grads["naive"].abs().sum() > 0
    for layout in SHARED:
        rel = (grads["naive"] - grads[layout]).norm() / grads["naive"].norm()
        assert rel < 1e-4, layout


@pytest.mark.parametrize("layout", ["naive", *SHARED])
def test_scoring_with_and_without_gradients_agree(tiny_cfg, demo, layout):
    """Without gradients only the decoder runs (it keeps no layer's output but the last): the
    same log-probs as the model's own forward, with the adapter on, and without it when off."""
    tok = load_tokenizer(tiny_cfg)
    torch.manual_seed(0)
    model = add_lora(load_base_model(tiny_cfg), tiny_cfg)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.05)
    groups = groups_for(tok, demo.train[:3], [3, 1, 2])
    with_grad = score_groups(model, groups, layout=layout).logps.detach()
    with torch.no_grad():
        without = score_groups(model, groups, layout=layout).logps
        with model.disable_adapter():
            off = score_groups(model, groups, layout=layout).logps
    assert torch.allclose(with_grad, without, atol=1e-4)
    assert not torch.allclose(without, off, atol=1e-3)  # the adapter acts in the decoder path
    with torch.enable_grad(), model.disable_adapter():
        assert torch.allclose(
            score_groups(model, groups, layout=layout).logps.detach(), off, atol=1e-4
        )


def test_gradient_checkpointing_encodes_the_stem_in_every_row(tiny_cfg, demo):
    # Checkpointed layers are replayed without their KV cache, so "shared" keeps no stem then.
    tok = load_tokenizer(tiny_cfg)
    model = add_lora(load_base_model(tiny_cfg), tiny_cfg)
    groups = groups_for(tok, demo.train[:3], [3, 1, 2])
    a = score_groups(model.eval(), groups, layout="naive")
    enable_checkpointing(model)
    b = score_groups(model.train(), groups, layout="shared")
    assert b.encoded == sum(g.tokens("shared") for g in groups)
    assert torch.allclose(a.logps, b.logps.detach(), atol=1e-4, rtol=0)
    b.logps.sum().backward()  # the replay runs without errors
    with pytest.raises(ValueError, match="gradient checkpointing"):
        score_groups(model, groups, layout="cached")


@torch.no_grad()
def test_packaged_model_shared_equals_naive(demo):
    cfg = ModelConfig(name=BUILTIN_SMOLLM2)
    model, tok = load_base_model(cfg), load_tokenizer(cfg)
    groups = groups_for(tok, demo.train[:3], [3, 1, 2])
    a = score_groups(model, groups, layout="naive")
    for layout in SHARED:
        b = score_groups(model, groups, layout=layout)
        assert torch.allclose(a.logps, b.logps, atol=1e-4, rtol=0), layout


def test_rejects_bad_calls(tiny):
    model, _ = tiny
    with pytest.raises(ValueError, match="at least one group"):
        score_groups(model, [])
    with pytest.raises(ValueError, match="layout"):
        score_groups(model, [Group((1,), (Branch((), ((2,),)),))], layout="fast")


@torch.no_grad()
def test_flex_attention_block_mask_equals_naive(tiny_cfg, demo, monkeypatch):
    # The GPU path (model.attention=auto picks FlexAttention on CUDA), checked on the CPU, where
    # FlexAttention runs without gradients. Static shapes: torch 2.13's CPU FlexAttention
    # template fails to compile once dynamo recompiles it with dynamic sizes (the "cached"
    # second pass is a new shape); CUDA compiles a different (Triton) template.
    pytest.importorskip("torch.nn.attention.flex_attention")
    import torch._dynamo

    monkeypatch.setattr(torch._dynamo.config, "automatic_dynamic_shapes", False)
    # The block mask is what this test checks, built and applied eagerly: transformers compiles
    # create_block_mask (4.57: with inductor, whose C++ fails to build on CPUs with AVX-512/AMX
    # under torch 2.13; 5.x: ~20 s of dynamo on a fresh machine) and the attention kernel (~10 s
    # of C++ for a CPU kernel no GPU run uses: CUDA compiles a Triton one). Eager FlexAttention
    # applies the same block mask, unfused.
    import transformers.integrations.flex_attention as hf_flex
    import transformers.masking_utils as masking
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    def eager_block_mask(*args, _compile=False, **kwargs):
        return create_block_mask(*args, _compile=False, **kwargs)

    monkeypatch.setattr(masking, "create_block_mask", eager_block_mask)
    monkeypatch.setattr(
        hf_flex,
        "compile_friendly_flex_attention",
        lambda q, k, v, training=False, **kw: flex_attention(q, k, v, **kw),
    )
    cfg = tiny_cfg.model_copy(update={"attention": "flex_attention"})
    model, tok = load_base_model(cfg, torch.device("cpu")), load_tokenizer(cfg)
    assert model.config._attn_implementation == "flex_attention"
    groups = groups_for(tok, demo.train[:3], [3, 1, 2])
    want = score_groups(load_base_model(tiny_cfg), groups, layout="naive")
    for layout in SHARED:
        got = score_groups(model, groups, layout=layout)
        assert torch.allclose(want.logps, got.logps, atol=1e-4, rtol=0), layout


def test_auto_attention_is_flex_on_cuda_only():
    from dmporec.model import resolve_attention

    assert resolve_attention("auto", torch.device("cpu")) == "sdpa"
    assert resolve_attention("auto", torch.device("cuda")) == "flex_attention"
    assert resolve_attention("eager", torch.device("cuda")) == "eager"
    with pytest.raises(ValueError, match="attention"):
        ModelConfig(attention="flash")


@torch.no_grad()
def test_logits_in_chunks_give_the_same_values(tiny, demo, monkeypatch):
    import dmporec.scoring.forward as scoring

    model, tok = tiny
    groups = groups_for(tok, demo.train[:3], [3, 1, 2])
    whole = score_groups(model, groups)
    monkeypatch.setattr(scoring, "_LOGIT_ELEMENTS", 3 * model.config.vocab_size)  # 3 at a time
    chunked = score_groups(model, groups)
    assert torch.allclose(whole.logps, chunked.logps, atol=1e-4, rtol=0)  # sums near 190 nats
