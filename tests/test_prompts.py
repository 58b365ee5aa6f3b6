import re

import pytest

from dmporec.collate import GroupEncoder
from dmporec.prompts import (
    ChatFormat,
    positive_listed_first,
    render_answer,
    render_instruction,
    render_pairs,
)
from dmporec.records import Item, Record
from dmporec.wording import WORDINGS, resolve_wording

# Row 0 of the authors' rec_Amazon_Movie_sft_ranking.json, shortened to three history items
# (the template is the same for any length; tests/test_alpaca.py checks whole files when present).
PAPER_INSTRUCTION = (
    "You are an assistant working on movie recommendations. Here is the user's history of movies "
    "they have watched:  <Title:Last Stand of the 300: The Legendary Battle at Thermopylae>  "
    "<Title:Keanu>  <Title:Criminal 2016> . Rank the likelihood of the user watching the two movies  "
    "<Title:The Exorcist III>  and  <Title:NFL Films Presents - San Diego Chargers Official 1994 Team Video VHS> ."
)
PAPER_OUTPUT = " <Title:NFL Films Presents - San Diego Chargers Official 1994 Team Video VHS> ,  <Title:The Exorcist III> "


def test_instruction_and_answer_match_the_paper_exactly():
    history = [
        "Last Stand of the 300: The Legendary Battle at Thermopylae",
        "Keanu",
        "Criminal 2016",
    ]
    nfl = "NFL Films Presents - San Diego Chargers Official 1994 Team Video VHS"
    assert render_instruction(history, "The Exorcist III", nfl).text == PAPER_INSTRUCTION
    assert render_answer(nfl, "The Exorcist III") == PAPER_OUTPUT


def test_instruction_splits_before_a_space():
    ins = render_instruction(["A", "B"], "X", "Y")
    assert ins.shared.endswith("<Title:B>") and ins.pair.startswith(" . Rank")


# The authors' Video Games wording, byte for byte as in their rec_Amazon_Game_*.json files.
GAMES_INSTRUCTION = (
    "You are an assistant working on Video Games recommendations. Here is the user's history of "
    "Video Games they have shopped:  <Title:Halo 3 - Xbox 360>  <Title: Microsoft SideWinder X5 "
    "Mouse> . Rank the likelihood of the user shopping the two Video Games  <Title:Crazy Taxi>  "
    "and  <Title:Dirt - Playstation 3> ."
)


def test_video_games_wording_byte_for_byte():
    history = [
        "Halo 3 - Xbox 360",
        " Microsoft SideWinder X5 Mouse",
    ]  # their titles keep edge spaces
    text = render_instruction(history, "Crazy Taxi", "Dirt - Playstation 3", WORDINGS["games"])
    assert text.text == GAMES_INSTRUCTION
    assert render_answer("Crazy Taxi", "Dirt - Playstation 3") == (
        " <Title:Crazy Taxi> ,  <Title:Dirt - Playstation 3> "
    )


def test_books_and_custom_wordings():
    books = render_instruction(["A"], "X", "Y", WORDINGS["books"]).text
    assert "book recommendations" in books and "have read:" in books
    assert "user reading the two books  <Title:X>" in books
    music = resolve_wording("music,songs,listened to,listening to,songs")
    text = render_instruction(["A"], "X", "Y", music).text
    assert text == (
        "You are an assistant working on music recommendations. Here is the user's history of "
        "songs they have listened to:  <Title:A> . Rank the likelihood of the user listening to "
        "the two songs  <Title:X>  and  <Title:Y> ."
    )
    assert music.name is None and WORDINGS["games"].name == "games"


@pytest.mark.parametrize(
    "spec,message",
    [
        ("music", "unknown wording 'music'"),
        ("a,b,c,d", "five comma-separated words"),
        ("a,b,c: d,e,f", "contains the template's ': '"),
        ("a, ,c,d,e", "must be non-empty"),
        ({"role": "a"}, "missing"),
        (3, "not int"),
    ],
)
def test_bad_wordings_say_what_is_wrong(spec, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        resolve_wording(spec)


def record(pos_first=None):
    return Record(
        "u1",
        [Item("A"), Item("B")],
        Item("P"),
        [Item("N1"), Item("N2"), Item("N3")],
        positive_first=pos_first,
    )


def test_candidate_order_is_seeded_and_source_order_wins():
    orders = {tuple(p.positive_first for p in render_pairs(record(), seed)) for seed in range(20)}
    assert len(orders) > 1  # the seed changes the order...
    assert render_pairs(record(), 7) == render_pairs(record(), 7)  # ...and fixes it
    assert [p.positive_first for p in render_pairs(record([True, False, True]), 5)] == [
        True,
        False,
        True,
    ]
    pair = render_pairs(record([False, False, False]))[0]
    assert "<Title:N1>  and  <Title:P>" in pair.instruction.text
    assert pair.chosen == render_answer("P", "N1") and pair.rejected == render_answer("N1", "P")
    assert positive_listed_first(record([False, True, True]), 1, 0) is True


def test_chat_format_wraps_like_the_template(tiny):
    _, tok = tiny
    chat = ChatFormat.from_tokenizer(tok)
    full = tok.apply_chat_template(
        [{"role": "user", "content": "hello"}], tokenize=False, add_generation_prompt=True
    )
    assert chat.prefix + "hello" + chat.suffix == full
    assert chat.answer_end == tok.eos_token
    assert ChatFormat.from_tokenizer(tok, use_chat_template=False) == ChatFormat(
        "", "\n", tok.eos_token
    )


def test_group_tokens_concatenate_to_the_rendered_text(tiny):
    _, tok = tiny
    chat = ChatFormat.from_tokenizer(tok)
    rec = record([True, False, True])
    group = GroupEncoder(tok, chat).group(rec, k=2)
    assert len(group.branches) == 2 and all(len(b.answers) == 2 for b in group.branches)
    pair = render_pairs(rec)[1]
    ids = group.prefix + group.branches[1].context + group.branches[1].answers[1]
    assert (
        tok.decode(ids)
        == chat.prefix + pair.instruction.text + chat.suffix + pair.rejected + chat.answer_end
    )
    chosen_only = GroupEncoder(tok, chat).group(rec, answers="chosen")
    assert [len(b.answers) for b in chosen_only.branches] == [1, 1, 1]


def test_no_template_starts_with_bos_only_where_the_tokenizer_adds_one():
    class Plain:  # a base model's tokenizer: no chat template
        chat_template = None
        eos_token, bos_token, bos_token_id = "<eos>", "<bos>", 2

        def __init__(self, adds_bos):
            self.adds_bos = adds_bos

        def __call__(self, text):
            return type("Enc", (), {"input_ids": [2, 9] if self.adds_bos else [9]})

    assert ChatFormat.from_tokenizer(Plain(True)) == ChatFormat("<bos>", "\n", "<eos>")
    assert ChatFormat.from_tokenizer(Plain(False)) == ChatFormat("", "\n", "<eos>")
