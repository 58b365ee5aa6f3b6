"""model.item_tokens=bpr: one collaborative-filtering token per title (dmporec.item_tokens).

The learning test uses data made so that only the item factors carry the signal: two clusters of
20 titles, every user likes their own cluster (history and positive from it, the negative from the
other), and a title is a random piece of the tiny tokenizer's vocabulary assigned to a random
cluster. Titles are single tokens so the copy the answer needs is one token, which the 2-layer
random tiny model learns within the budget (~1000 steps); what decides the pair is which
candidate belongs to the user's cluster, which the text does not say and BPR-MF's factors do.
"""

import json
import random
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file

from dmporec import item_tokens
from dmporec.cli import main
from dmporec.collate import GroupEncoder, model_encoder
from dmporec.config import ConfigError, EvalConfig, load_config
from dmporec.data import load_records
from dmporec.demo_data import DemoDataConfig, make_demo_data
from dmporec.evaluation import score_pairs
from dmporec.files import read_jsonl
from dmporec.model import (
    BUILTIN_TINY,
    ModelConfig,
    load_base_model,
    load_stage_model,
    load_tokenizer,
)
from dmporec.prompts import ChatFormat, title_tag
from dmporec.ranker import load_ranker
from dmporec.records import Item, Record, TitleNormalization, write_records
from dmporec.stages.common import settings_changes, stage_settings
from dmporec.training import OTHERS

TINY = ["model.name=builtin:tiny-qwen3", "eval.n_boot=20"]
DEMO = [
    *TINY,
    "data.demo={train_users: 6, valid_users: 0, test_users: 5, negatives: 2}",
    "sft.epochs=1",
    "sft.batch_size=3",
    "dmpo.epochs=1",
    "dmpo.batch_size=3",
    "dmpo.k=1",
]
# Learns in ~1000 optimizer steps: 512 users x 16 epochs at 8 per step (about 20 s each model).
LEARN = ["sft.epochs=16", "sft.learning_rate=3e-3", "sft.batch_size=8"]


def single_token_titles(tokenizer) -> list[str]:
    """Vocabulary pieces that a prompt writes as one token between `<Title:` and `>`."""
    width = len(tokenizer(" <Title:Ab> ", add_special_tokens=False).input_ids) - 1
    return sorted(
        w
        for w in tokenizer.get_vocab()
        if re.fullmatch(r"[A-Za-z]{2,}", w)
        and len(tokenizer(f" <Title:{w}> ", add_special_tokens=False).input_ids) == width
    )


def cluster_users(clusters, prefix, n, rng):
    """n users alternating between the clusters: 3 history titles and the positive from their
    own cluster, the negative from the other (listing order drawn from the prompt seed)."""
    out = []
    for i in range(n):
        own, other = clusters[i % 2], clusters[1 - i % 2]
        picked = rng.sample(own, 4)
        out.append(
            Record(
                f"{prefix}{i}",
                [Item(t) for t in picked[1:]],
                Item(picked[0]),
                [Item(rng.choice(other))],
            )
        )
    return out


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("clusters")
    rng = random.Random(0)
    titles = single_token_titles(load_tokenizer(ModelConfig(name=BUILTIN_TINY)))
    rng.shuffle(titles)
    clusters = [titles[:20], titles[20:40]]
    train = cluster_users(clusters, "u", 512, rng)
    write_records(root / "train.jsonl", train)
    write_records(root / "dmpo.jsonl", train[:64])
    write_records(root / "test.jsonl", cluster_users(clusters, "t", 80, rng))
    return root


def data_args(root: Path) -> list[str]:
    return [
        f"data.sft_train={root}/train.jsonl",
        f"data.dmpo_train={root}/dmpo.jsonl",
        f"data.eval={root}/test.jsonl",
    ]


@pytest.fixture(scope="module")
def trained(synthetic):
    """{'bpr': run dir, 'none': run dir}: SFT from the same seed, with and without item tokens,
    and its evaluation on the 80 held-out users."""
    runs = {}
    for items in ("bpr", "none"):
        out = synthetic / f"run-{items}"
        args = [*TINY, *data_args(synthetic), *LEARN, f"model.item_tokens={items}"]
        assert main(["sft", *args, f"output_dir={out}"]) == 0
        assert main(["evaluate", "--stage", "sft", *args, f"output_dir={out}"]) == 0
        runs[items] = out
    return runs


def accuracy(stage_dir: Path) -> float:
    return json.loads((stage_dir / "eval" / "eval.json").read_text())["accuracy"]


def losses(stage_dir: Path) -> list[float]:
    return [row["loss"] for row in read_jsonl(stage_dir / "metrics.jsonl")]


def test_item_tokens_learn_what_only_the_factors_say(trained):
    with_tokens, without = accuracy(trained["bpr"] / "sft"), accuracy(trained["none"] / "sft")
    # 80 held-out users, one pair each: chance is 0.5 +- 0.056.
    assert with_tokens >= 0.85, with_tokens
    assert with_tokens >= without + 0.25, (with_tokens, without)
    curve, plain = losses(trained["bpr"] / "sft"), losses(trained["none"] / "sft")
    first, last = (sum(c) / len(c) for c in (curve[:64], curve[-64:]))
    assert last < first - 0.5  # the loss falls (64 steps an epoch)
    assert last < sum(plain[-64:]) / 64  # and below the model's without the tokens


def test_a_finished_stage_loads_back_and_scores_the_same(trained):
    stage = trained["bpr"] / "sft"
    model, tokenizer, cfg = load_stage_model(stage)
    assert cfg.item_tokens == "bpr" and item_tokens.find(model) is not None
    records = load_records(trained["bpr"].parent / "test.jsonl", TitleNormalization())
    saved = read_jsonl(stage / "eval" / "predictions.jsonl")
    for layout in ("shared", "cached", "naive"):  # the stem and KV cache read the wrapper too
        rows = score_pairs(model, tokenizer, cfg, records, EvalConfig(layout=layout), 0)
        for row, then in zip(rows, saved, strict=True):
            for key in ("chosen_logp", "rejected_logp", "chosen_logp_swapped"):
                assert row[key] == pytest.approx(then[key], abs=1e-4), (layout, key)
    # The projection was trained: the saved one is not the seeded start.
    start = item_tokens.ItemTokenEmbedding(
        load_base_model(cfg).get_input_embeddings(),
        item_tokens.load_stage(stage)[0],
        len(load_tokenizer(cfg)),
        seed=42,  # sft.seed
    )
    trained_proj = item_tokens.load_stage(stage)[1]["proj.weight"]
    assert trained_proj.shape == start.proj_weight.shape
    assert not torch.allclose(trained_proj, start.proj_weight)


def test_dmpo_on_top_reads_the_sft_projection_and_recommend_ranks_with_it(
    trained, synthetic, tmp_path, capsys
):
    sft = trained["bpr"] / "sft"
    out = tmp_path / "dmpo-run"
    args = [*TINY, *data_args(synthetic), *LEARN, "model.item_tokens=bpr", f"output_dir={out}"]
    dmpo = ["dmpo.k=1", "dmpo.epochs=1", "dmpo.batch_size=8", "dmpo.learning_rate=1e-3"]
    assert main(["dmpo", "--sft-dir", str(sft), *args, *dmpo]) == 0
    assert main(["evaluate", "--stage", "dmpo", *args, *dmpo]) == 0
    assert accuracy(out / "dmpo") >= 0.85
    # Frozen in DMPO: the stage keeps the SFT's projection, byte for byte.
    a, b = (load_file(d / item_tokens.FILES[0]) for d in (sft, out / "dmpo"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # recommend / serve load a run through load_ranker: the prompts carry the tokens there too.
    ranker = load_ranker(str(trained["bpr"]))
    assert ranker.encoder.tag is not title_tag
    users = load_records(synthetic / "test.jsonl", TitleNormalization())
    requests = [
        ranker.request([i.title for i in r.history], [r.positive.title, r.negatives[0].title])
        for r in users
    ]
    scores = ranker.rank(requests)
    assert sum(s[0] > s[1] for s in scores) >= 0.85 * len(users)

    capsys.readouterr()
    assert main(["export", "--model", str(out), "--out", str(tmp_path / "exported")]) == 2
    err = capsys.readouterr().err
    assert "model.item_tokens=bpr" in err and "Traceback" not in err


def test_the_option_is_part_of_the_stage_settings(tmp_path, capsys):
    plain = load_config(None, DEMO)
    items = load_config(None, [*DEMO, "model.item_tokens=bpr"])
    a, b = stage_settings(plain, "sft"), stage_settings(items, "sft")
    assert a["model.item_tokens"] == "none" and b["model.item_tokens"] == "bpr"
    assert "item_tokens.fitted_on" in b and "item_tokens.fitted_on" not in a
    # A record made before the option existed reads as made without it: still reused.
    older = {k: v for k, v in a.items() if k != "model.item_tokens"}
    assert settings_changes(older, a) == ""

    out = tmp_path / "run"
    assert main(["sft", *DEMO, f"output_dir={out}"]) == 0
    capsys.readouterr()
    assert main(["sft", *DEMO, "model.item_tokens=bpr", f"output_dir={out}"]) == 2
    assert "model.item_tokens: 'none' then, 'bpr' now" in capsys.readouterr().err
    # DMPO and evaluate refuse a model trained the other way, in one line.
    assert main(["dmpo", *DEMO, "model.item_tokens=bpr", f"output_dir={tmp_path / 'd'}",
                 "--sft-dir", str(out / "sft")]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "was trained with model.item_tokens=none" in err and len(err.strip().splitlines()) == 1
    assert main(["evaluate", "--stage", str(out / "sft"), *DEMO, "model.item_tokens=bpr",
                 f"output_dir={tmp_path / 'e'}"]) == 2  # fmt: skip
    assert "trained with model.item_tokens=none, the config says bpr" in capsys.readouterr().err


def test_a_bad_value_is_one_clear_line(tmp_path, capsys):
    with pytest.raises(ValidationError, match="'none' or 'bpr'"):
        ModelConfig(item_tokens="sasrec")
    assert main(["sft", *DEMO, "model.item_tokens=sasrec", f"output_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "model.item_tokens" in err and len(err.strip().splitlines()) == 1, err


def test_tokens_follow_titles_with_a_factor_in_the_instruction_only(tiny_cfg):
    history = [Item(t) for t in ("Heat", "Alien", "Up")]
    users = [
        Record("a", history, Item("Jaws"), [Item("Nowhere")]),  # Nowhere: in no history
        Record("b", [Item("Jaws"), Item("Heat")], Item("Alien"), [Item("Up")]),
    ]
    table = item_tokens.fit_table(users)
    assert set(table.titles) == {"Heat", "Alien", "Up", "Jaws"} and table.missing(users) == 1
    tok = load_tokenizer(tiny_cfg)
    threshold = item_tokens.add_tokens(tok, table)
    assert threshold == 512 == len(tok) - 4  # from the tokenizer's own length on
    enc = GroupEncoder(tok, ChatFormat.from_tokenizer(tok))
    pair = enc.group(users[0], orders="both")
    prompt = tok.decode(pair.prefix + pair.branches[0].context)
    for title in ("Heat", "Alien", "Up", "Jaws"):
        assert f" <Title:{title}><item_{table.rows[title]}> " in prompt
    assert " <Title:Nowhere> " in prompt and "Nowhere><item" not in prompt
    # Without the item tokens the tokens of the text are the same, less the added ones.
    plain = GroupEncoder(load_tokenizer(tiny_cfg), ChatFormat.from_tokenizer(tok)).group(users[0])
    kept = [t for t in pair.prefix + pair.branches[0].context if t < threshold]
    assert kept == list(plain.prefix + plain.branches[0].context)
    for branch in pair.branches:  # answers: the base vocabulary only
        assert all(t < threshold for answer in branch.answers for t in answer)
        assert "<item_" not in "".join(tok.decode(a) for a in branch.answers)


def test_the_embedding_reads_items_and_leaves_the_rest(tiny_cfg):
    model, tok = load_base_model(tiny_cfg), load_tokenizer(tiny_cfg)
    base = model.get_input_embeddings()
    table = item_tokens.ItemTable(("Heat", "Up"), torch.randn(2, 8))
    item_tokens.add_tokens(tok, table)
    module = item_tokens.attach(model, tok, seed=0)
    assert model.get_output_embeddings().weight is base.weight  # the head is not resized
    ids = torch.tensor([[5, 512, 7, 513]])
    out = module(ids)
    assert torch.equal(out[0, [0, 2]], base(torch.tensor([5, 7])))
    expected = table.factors @ module.proj_weight.T + module.proj_bias
    assert torch.allclose(out[0, [1, 3]], expected)
    # Its start: proj(f) about as long as a token's embedding.
    ratio = expected.norm(dim=-1).mean() / base.weight.norm(dim=-1).mean()
    assert 0.3 < ratio < 3, ratio
    with pytest.raises(ValueError, match="has item tokens already"):
        item_tokens.attach(model, tok)
    with pytest.raises(ConfigError, match="this tokenizer has none"):
        model_encoder(
            load_tokenizer(tiny_cfg), ModelConfig(name=BUILTIN_TINY, item_tokens="bpr"), 0
        )


def test_zero_shot_is_scored_without_and_says_so(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["evaluate", "--stage", "zero_shot", *DEMO, "model.item_tokens=bpr",
                 f"output_dir={out}"]) == 0  # fmt: skip
    assert "model.item_tokens is for trained stages; scored without" in capsys.readouterr().out


def test_a_resumed_stage_trains_the_projection_it_had(tmp_path, stop_training, capsys):
    args = [*DEMO, "model.item_tokens=bpr", "sft.epochs=2", "sft.batch_size=2",
            "sft.save_every_steps=1", "sft.learning_rate=1e-2"]  # fmt: skip
    assert main(["sft", *args, f"output_dir={tmp_path / 'a'}"]) == 0
    said = [line for line in capsys.readouterr().out.splitlines() if "item tokens:" in line]
    assert len(said) == 1 and "titles of those files are in no history" in said[0], said
    full = load_file(tmp_path / "a/sft" / item_tokens.FILES[0])

    stop_training(3, ["sft", *args, f"output_dir={tmp_path / 'b'}"])
    assert (tmp_path / "b/sft/checkpoint" / OTHERS).is_file()
    assert main(["sft", *args, f"output_dir={tmp_path / 'b'}"]) == 0
    assert "sft: resuming from" in capsys.readouterr().out
    resumed = load_file(tmp_path / "b/sft" / item_tokens.FILES[0])
    assert full.keys() == resumed.keys()
    for key in full:
        assert torch.allclose(full[key], resumed[key], atol=1e-6), key


def test_a_stage_is_evaluated_on_other_files_with_the_table_it_was_trained_with(tmp_path, capsys):
    demo = make_demo_data(DemoDataConfig(train_users=6, valid_users=0, test_users=5, negatives=2))
    write_records(tmp_path / "train.jsonl", demo.train)
    write_records(tmp_path / "test.jsonl", demo.test)
    other = tmp_path / "other.jsonl"
    write_records(other, [replace(demo.test[0], negatives=[Item("A Title Nobody Watched")])])
    args = [*TINY, "sft.epochs=1", "model.item_tokens=bpr", f"data.sft_train={tmp_path}/train.jsonl",
            f"output_dir={tmp_path / 'run'}"]  # fmt: skip
    assert main(["sft", *args, f"data.eval={tmp_path}/test.jsonl"]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--stage", "sft", *args, f"data.eval={other}", "--out",
                 str(tmp_path / "other-eval")]) == 0  # fmt: skip
    said = capsys.readouterr().out
    fitted = {i.title for r in demo.train + demo.test for i in r.history}
    user = load_records(other, TitleNormalization())[0]
    missing = {i.title for i in (*user.history, user.positive, *user.negatives)} - fitted
    assert "A Title Nobody Watched" in missing
    assert f"evaluate sft: {len(missing)} titles are in no history the item tokens" in said
    # Training again with another test file is another table: refused.
    assert main(["sft", *args, f"data.eval={other}"]) == 2
    assert "item_tokens.fitted_on" in capsys.readouterr().err
