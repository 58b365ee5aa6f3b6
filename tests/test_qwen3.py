"""Qwen3 for real on the CPU: its real tokenizer and chat template (../shared/models/qwen3), and a
random-weight Qwen3 built from the real Qwen3-8B config at 2 small layers (`dmporec random-model`)."""

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from dmporec.alpaca import read_alpaca
from dmporec.cli import main
from dmporec.collate import GroupEncoder
from dmporec.model import ModelConfig, load_base_model, load_tokenizer
from dmporec.prompts import ChatFormat, render_pairs
from dmporec.ranking import PairEncoder, RankRequest, ordered_pairs
from dmporec.scoring import score_groups

SHARED = Path(__file__).resolve().parents[2] / "shared"
QWEN3 = SHARED / "models" / "qwen3"
DMPO = SHARED / "data" / "dmpo"
pytestmark = pytest.mark.skipif(not QWEN3.is_dir(), reason="../shared/models/qwen3 is not here")
NO_THINKING = {"enable_thinking": False}


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(QWEN3)


@pytest.fixture(scope="module")
def chat(tok):
    return ChatFormat.from_tokenizer(tok, template_kwargs=NO_THINKING)


@pytest.fixture(scope="module")
def qwen3_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("qwen3") / "qwen3-8b-random"
    args = ["--config", str(QWEN3 / "config-Qwen3-8B.json"), "--tokenizer", str(QWEN3)]
    assert main(["random-model", *args, "--out", str(out)]) == 0
    return out


def test_rendered_prompt_is_qwen3s_own_template(tok, chat):
    record = read_alpaca(DMPO / "rec_data_ml_1m_eval_ranking.json")[0]
    pair = render_pairs(record)[0]
    ours = chat.prefix + pair.instruction.text + chat.suffix
    theirs = tok.apply_chat_template(
        [{"role": "user", "content": pair.instruction.text}],
        tokenize=False,
        add_generation_prompt=True,
        **NO_THINKING,
    )
    assert ours == theirs
    assert ours.startswith("<|im_start|>user\nYou are an assistant working on movie")
    assert ours.endswith(" .<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert chat.answer_end == "<|im_end|>" == tok.eos_token


def _records():
    records = read_alpaca(DMPO / "rec_data_ml_1m_eval_ranking.json")[:100]
    records += read_alpaca(DMPO / "rec_Amazon_Movie_dpo_ranking_3.json")[:30]
    return records


def test_segment_ids_equal_the_naive_tokenization(tok, chat, demo):
    # The scorer tokenizes prefix, pair line and answer apart and concatenates them; for
    # Qwen3's BPE that must be the tokenization of the whole text, at every seam.
    enc = GroupEncoder(tok, chat)
    checked = 0
    for record in _records() + demo.train:
        group = enc.group(record, orders="both")
        pairs = render_pairs(record)
        swapped = replace(
            record,
            negatives=record.negatives[: len(pairs)],
            positive_first=[not p.positive_first for p in pairs],
        )
        for branch, pair in zip(group.branches, pairs + render_pairs(swapped), strict=True):
            for ids, answer in zip(branch.answers, [pair.chosen, pair.rejected], strict=True):
                text = chat.prefix + pair.instruction.text + chat.suffix + answer + chat.answer_end
                naive = tok(text, add_special_tokens=False)["input_ids"]
                assert list(group.prefix + branch.context + ids) == naive, record.user_id
                checked += 1
    assert checked == 880  # 130 authors' records + demo users, every answer, both orders


def test_ranking_prompts_tokenize_the_same_at_their_seams(tok, chat):
    enc = PairEncoder(tok, chat)
    request = RankRequest(("Heat (1995)", "Up (2009)"), ("Jaws (1975)", "Alien (1979)", "Fargo"))
    (group,) = enc.groups(request, max_group_tokens=10_000)
    for branch, (i, j) in zip(group.branches, ordered_pairs(3), strict=True):
        # Byte-level BPE decodes losslessly: the decoded ids are the naive text.
        for ids in branch.answers:
            text = tok.decode(group.prefix + branch.context + ids)
            assert text.endswith("<|im_end|>") and request.candidates[i] in text
            naive = tok(text, add_special_tokens=False)["input_ids"]
            assert list(group.prefix + branch.context + ids) == naive, (i, j)


def test_random_qwen3_from_the_real_8b_config(qwen3_dir):
    config = json.loads((qwen3_dir / "config.json").read_text())
    real = json.loads((QWEN3 / "config-Qwen3-8B.json").read_text())
    assert config["vocab_size"] == real["vocab_size"] == 151_936
    assert config.get("rope_parameters", config)["rope_theta"] == real["rope_theta"] == 1_000_000
    assert config["num_hidden_layers"] == 2 and config["max_window_layers"] == 36
    assert config["tie_word_embeddings"] is False


def test_shared_scores_equal_naive_on_random_qwen3(qwen3_dir, tok, chat):
    cfg = ModelConfig(name=str(qwen3_dir), chat_template_kwargs=NO_THINKING)
    model = load_base_model(cfg).eval()
    enc = GroupEncoder(load_tokenizer(cfg), chat)
    groups = [enc.group(r, orders="both") for r in _records()[:4]]
    with torch.no_grad():
        naive = score_groups(model, groups, layout="naive")
        shared = score_groups(model, groups, layout="shared")
    assert torch.allclose(naive.logps, shared.logps, atol=1e-4, rtol=0)


def test_the_whole_pipeline_runs_on_random_qwen3(qwen3_dir, tmp_path, capsys):
    out = tmp_path / "run"
    args = [
        f"model.name={qwen3_dir}",
        "model.chat_template_kwargs={enable_thinking: false}",
        "data.demo={train_users: 6, valid_users: 0, test_users: 4, negatives: 3}",
        "sft.epochs=2",
        "sft.batch_size=3",
        "sft.learning_rate=5e-3",
        "dmpo.epochs=1",
        "dmpo.batch_size=3",
        "dmpo.k=3",
        "eval.n_boot=20",
        f"output_dir={out}",
    ]
    assert main(["run", *args]) == 0
    table = capsys.readouterr().out
    assert "| zero-shot | 4 |" in table and "| SFT | 4 |" in table and "| DMPO (k=3) | 4 |" in table
    losses = [json.loads(x)["loss"] for x in (out / "sft/metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < losses[0]  # it learns (to copy the answer format, at least)
