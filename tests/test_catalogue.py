"""Top-K from a catalogue: the catalogue and its file, retrieval, the pivot rerank and fusion
(dmporec.catalogue, dmporec.rerank); the LLM is a stub with known preferences, except where the
pivot pairs are checked against all pairs on the tiny model."""

import json
import math
from collections import Counter

import pytest
import torch

from dmporec.baselines import Popularity
from dmporec.catalogue import (
    Catalogue,
    CatalogueItem,
    catalogue_from_records,
    read_catalogue,
    retrieve,
    write_catalogue,
)
from dmporec.config import DataConfig
from dmporec.hybrid import Hybrid
from dmporec.prompts import ChatFormat
from dmporec.ranking import (
    PairEncoder,
    RankRequest,
    margin_matrix,
    ordered_pairs,
    pair_answers,
    pivot_pairs,
)
from dmporec.records import DataError, Item, Record, TitleNormalization
from dmporec.rerank import (
    Recommender,
    ranks,
    reciprocal_rank_fusion,
    rerank_pairs,
    rerank_prompts,
)


def record(user: str, history: list[str], positive: str, negatives: list[str]) -> Record:
    return Record(user, [Item(t) for t in history], Item(positive), [Item(t) for t in negatives])


def test_the_catalogue_of_records_counts_each_user_once():
    records = [
        Record("a", [Item("A", "1"), Item("B")], Item("C"), [Item("D")]),
        # The same user in the other training file (the authors' SFT and DPO files share users,
        # not ids): counted once.
        Record("a-dpo", [Item("A", "1"), Item("B")], Item("C"), [Item("D"), Item("E")]),
        record("b", ["B"], "A", ["E"]),
    ]
    cat = catalogue_from_records(records, "test")
    assert [(i.title, i.item_id, i.count) for i in cat.items] == [
        ("A", "1", 2),  # a's history, b's positive
        ("B", None, 2),
        ("C", None, 1),
        ("D", None, 0),  # negatives only: in the catalogue, never counted
        ("E", None, 0),
    ]
    assert cat.index("C") == 2 and cat.index("Z") is None


def test_a_catalogue_file_round_trips_and_cleans_titles(tmp_path):
    cat = Catalogue((CatalogueItem("Heat", "6", 3), CatalogueItem("Amélie", None, 0)), "x")
    path = tmp_path / "catalogue.jsonl"
    write_catalogue(path, cat)
    assert path.read_text(encoding="utf-8").splitlines()[0] == (
        '{"title": "Heat", "item_id": "6", "count": 3}'
    )
    assert read_catalogue(path, TitleNormalization()).items == cat.items
    path.write_text('{"title": "Am&eacute;lie  ", "item_id": 7}\n\n{"title": "Up"}\n')
    items = read_catalogue(path, TitleNormalization()).items
    assert items == (CatalogueItem("Amélie", "7", 0), CatalogueItem("Up", None, 0))


BAD_CATALOGUES = [
    ('{"title": "A"}\n{"title": "B"\n', "line 2: malformed JSON"),
    ('["A"]\n', "line 1: expected an object"),
    ('{"name": "A"}\n', "line 1, field 'name': unknown key (allowed: title, item_id, count)"),
    ('{"item_id": 3}\n', "line 1, field 'title': missing"),
    ('{"title": " "}\n', "line 1, field 'title': expected a non-empty string"),
    ('{"title": 5}\n', "line 1, field 'title': expected a non-empty string"),
    (
        '{"title": "Up"}\n{"title": "Heat"}\n{"title": " Up"}\n',
        "line 3, field 'title': duplicate title 'Up' (also on line 1",
    ),
    ('{"title": "A", "item_id": true}\n', "line 1, field 'item_id': expected a string or int"),
    ('{"title": "A", "count": -1}\n', "line 1, field 'count': expected an integer >= 0"),
    ("\n\n", "no items"),
]


@pytest.mark.parametrize(("text", "message"), BAD_CATALOGUES, ids=[m for _, m in BAD_CATALOGUES])
def test_a_bad_catalogue_file_names_file_line_and_field(tmp_path, text, message):
    path = tmp_path / "cat.jsonl"
    path.write_text(text)
    with pytest.raises(DataError) as e:
        read_catalogue(path, TitleNormalization())
    assert str(e.value).startswith(str(path)) and message in str(e.value), str(e.value)
    assert "\n" not in str(e.value)


CATALOGUE = Catalogue(
    tuple(CatalogueItem(t, None, c) for t, c in [("A", 5), ("B", 3), ("C", 3), ("D", 1), ("E", 0)]),
    "test",
)
POPULARITY = Popularity(Counter({"A": 5, "B": 3, "C": 3, "D": 1}))


def test_retrieval_leaves_the_history_out_and_keeps_the_catalogue_order_on_ties():
    got = retrieve(POPULARITY, CATALOGUE, ["A", "Unknown"], 3)
    assert got.indices == [1, 2, 3] and got.scores == [3.0, 3.0, 1.0]
    reordered = Catalogue((CATALOGUE.items[2], *CATALOGUE.items[:2], *CATALOGUE.items[3:]), "x")
    assert retrieve(POPULARITY, reordered, [], 2).indices == [1, 0]  # A, then C listed before B


def test_retrieval_among_a_candidate_set_draws_only_from_it():
    # An evaluation's candidates: B is left out of them, A is the history's.
    got = retrieve(POPULARITY, CATALOGUE, ["A"], 2, among=[4, 3, 2, 0])
    assert got.indices == [2, 3] and got.scores == [3.0, 1.0]
    assert retrieve(POPULARITY, CATALOGUE, [], 5, among=[4, 2, 1]).indices == [1, 2, 4]
    rec = Recommender(CATALOGUE, TitleNormalization(), "popularity", {"popularity": POPULARITY})
    plan = rec.plan(["A"], k=2, m=3, among=[0, 3, 4])
    assert plan.retrieved.indices == [3, 4] and any("reranking 2" in n for n in plan.notes)
    with pytest.raises(DataError, match="top-K 3 is more than the 2 catalogue titles left"):
        rec.plan(["A"], k=3, m=3, among=[0, 3, 4])


def test_pivot_pairs_cost_2p_m_minus_1_prompts_not_m_m_minus_1():
    for m in range(1, 12):
        for p in range(1, 5):
            pairs = pivot_pairs(m, p)
            assert len(pairs) == rerank_prompts(m, "pivot", p) == len(set(pairs))
            assert all(min(a, b) < p for a, b in pairs)  # every pair holds a pivot
        assert len(rerank_pairs(m, "all-pairs", 2)) == rerank_prompts(m, "all-pairs", 2)
        assert sorted(pivot_pairs(m, 2)) == rerank_pairs(m, "pivot", 2)  # by the first listed
        assert pivot_pairs(m, m - 1) == ordered_pairs(m)
    assert rerank_prompts(20, "pivot", 2) == 2 * 2 * 19 - 2 == 74
    assert rerank_prompts(20, "all-pairs", 2) == 380 and rerank_prompts(40, "pivot", 2) == 154
    assert rerank_prompts(20, "none", 2) == 0


def test_margin_matrix_by_hand():
    """Pairs (0, 1) and (1, 0): listed first minus listed second = 1.0 and -0.5, so
    m[0, 1] = 1.0 (asked 0 first) + 0.5 (asked 1 first: -(-0.5)) = 1.5, m[1, 0] = -1.5."""
    m = margin_matrix(3, [(0, 1), (1, 0)], torch.tensor([-1.0, -2.5]), torch.tensor([-2.0, -2.0]))
    assert m.tolist() == [[0, 1.5, 0], [-1.5, 0, 0], [0, 0, 0]]


def test_reciprocal_rank_fusion_by_hand():
    assert ranks([0.1, 0.5, 0.5, -1]) == [3, 1, 2, 4]
    fused = reciprocal_rank_fusion([1, 2, 3], [3, 1, 2])
    assert fused == pytest.approx([1 / 61 + 1 / 63, 1 / 62 + 1 / 61, 1 / 63 + 1 / 62])


class StubRanker:
    """An LLM whose preferences are a known total order: the answer ranking a first beats the
    one ranking b first by utility[a] - utility[b] + 0.7 when a is listed first (a position
    bias, which asking both orders cancels). Counts the prompts it is asked."""

    def __init__(self, utility: dict[str, float]) -> None:
        self.utility, self.prompts = utility, 0
        self.data_cfg = DataConfig()

    def bounded(self, request: RankRequest) -> RankRequest:
        return request

    def answers(self, requests, pairs_of, progress=None, **_):
        out = []
        for request, pairs in zip(requests, pairs_of, strict=True):
            c = request.candidates
            d = torch.tensor([self.utility[c[a]] - self.utility[c[b]] + 0.7 for a, b in pairs])
            out.append((-3 + d / 2, -3 - d / 2))
            self.prompts += len(pairs)
            if progress:
                progress(len(pairs))
        return out


TITLES = [f"Film {i:02d}" for i in range(30)]


def big_catalogue() -> Catalogue:
    return Catalogue(tuple(CatalogueItem(t, str(i), 30 - i) for i, t in enumerate(TITLES)), "big")


def llm_only(catalogue: Catalogue) -> Recommender:
    """Retrieval by popularity (the catalogue order), fused by a hybrid of the LLM alone."""
    hybrid = Hybrid(("llm",), (1.0,), (1.0,), 1.0, 1, 1, 1.0)
    pop = Popularity(Counter({i.title: i.count for i in catalogue.items}))
    return Recommender(catalogue, TitleNormalization(), "popularity", {"popularity": pop}, hybrid)


def test_pivot_and_all_pairs_agree_on_a_total_order_in_a_fraction_of_the_prompts():
    rng = torch.Generator().manual_seed(0)
    utility = dict(zip(TITLES, torch.randn(30, generator=rng).tolist(), strict=True))
    rec = llm_only(big_catalogue())
    top = {}
    for mode in ("pivot", "all-pairs"):
        ranker = StubRanker(utility)
        heard: list[int] = []
        plan = rec.plan(["Film 00"], k=10, m=20, rerank=mode, pivots=2)
        doc = rec.finish(plan, ranker, progress=heard.append)
        assert ranker.prompts == doc["prompts"] == plan.prompts == sum(heard)
        top[mode] = [it["title"] for it in doc["recommended"]]
        assert doc["fusion"] == "hybrid" and doc["candidates"] == 20
    assert ranker.prompts == 20 * 19
    assert rerank_prompts(20, "pivot", 2) == 74  # 2P(M-1) - P(P-1)
    candidates = TITLES[1:21]  # popularity's top 20, the history's Film 00 left out
    assert top["pivot"] == top["all-pairs"] == sorted(candidates, key=lambda t: -utility[t])[:10]


def test_pivot_scores_are_mean_margins_over_the_pivots():
    """Margins are 2 (u_a - u_b) (both orders, the bias cancelled), so an item's mean over the
    pivots (u = 0, 1; its own margin counted 0) is 2 u - 1: pivots score 2*0-1 and 2*1-1 too."""
    utility = {t: float(i) for i, t in enumerate(["A", "B", "C", "D"])}
    rec = llm_only(
        Catalogue(tuple(CatalogueItem(t, None, 9 - i) for i, t in enumerate("ABCD")), "x")
    )
    doc = rec.finish(rec.plan(["Seen"], k=4, m=4, pivots=2), StubRanker(utility))
    assert {it["title"]: it["llm_score"] for it in doc["recommended"]} == pytest.approx(
        {"A": -1.0, "B": 1.0, "C": 3.0, "D": 5.0}
    )
    assert [it["retriever_rank"] for it in doc["recommended"]] == [4, 3, 2, 1]


def test_without_a_hybrid_the_orders_are_fused_by_reciprocal_rank():
    utility = {t: -float(i) for i, t in enumerate(TITLES)}  # the LLM agrees with popularity...
    utility["Film 05"] = 100.0  # ...but for one title it loves
    rec = llm_only(big_catalogue())
    rec.hybrid = None
    doc = rec.finish(rec.plan(["Film 00"], k=3, m=8), StubRanker(utility))
    assert doc["fusion"] == "rrf"
    first = doc["recommended"][0]
    assert first["retriever_rank"] == 1 and first["title"] == "Film 01"  # ranks 1 and 2
    assert first["fused_score"] == pytest.approx(1 / 61 + 1 / 62, abs=1e-6)
    # (retriever, LLM) ranks: Film 02 (2, 3) 1/62 + 1/63 > Film 05 (5, 1) > Film 03 (3, 4)
    assert [it["title"] for it in doc["recommended"]] == ["Film 01", "Film 02", "Film 05"]
    none = rec.finish(rec.plan(["Film 00"], k=3, m=8, rerank="none"), StubRanker(utility))
    assert [it["retriever_rank"] for it in none["recommended"]] == [1, 2, 3]
    assert none["prompts"] == 0 and none["recommended"][0]["llm_score"] is None


PLAN_ERRORS = [
    (dict(k=5), "top-K 5 is more than the 4 catalogue titles left once the history's 1"),
    (dict(k=3, m=2), "M=2 candidates to rerank is under top-K 3"),
    (dict(pivots=0), "pivots must be at least 1"),
    (dict(rerank="bogus"), "rerank must be one of pivot, all-pairs, none"),
    (dict(domain="music"), "field 'domain'"),
]


@pytest.mark.parametrize(("kwargs", "message"), PLAN_ERRORS, ids=[m for _, m in PLAN_ERRORS])
def test_bad_requests_are_one_line_errors_before_any_model(kwargs, message):
    rec = Recommender(CATALOGUE, TitleNormalization(), "popularity", {"popularity": POPULARITY})
    with pytest.raises(DataError, match=message):
        rec.plan(["A"], **{"k": 2, "m": 3, **kwargs})
    with pytest.raises(DataError, match="field 'history': title 1 is empty"):
        rec.plan(["A", " "], k=2)


def test_what_the_plan_says_it_did_differently():
    rec = Recommender(CATALOGUE, TitleNormalization(), "popularity", {"popularity": POPULARITY})
    plan = rec.plan(["A", "Nope", "Neither"], k=2, m=10)
    assert len(plan.retrieved.indices) == 4 and plan.matched == 1
    assert any("reranking 4" in n for n in plan.notes), plan.notes
    assert any("history: 1 of 3 titles are in the catalogue" in n for n in plan.notes)
    empty = rec.plan([], k=2, m=3)
    assert empty.rerank == "none" and empty.prompts == 0 and empty.retrieved.indices == [0, 1]
    assert any("empty history" in n for n in empty.notes)
    doc = rec.finish(empty, ranker=None)
    assert [it["title"] for it in doc["recommended"]] == ["A", "B"]
    assert doc["fusion"] == "none" and doc["retriever"] == "popularity"


def test_the_pivot_subset_scores_the_same_pairs_as_all_pairs(tiny):
    """On the tiny model: the pivot pairs' margins equal those same pairs' margins when every
    pair is asked (their prompts are the same; only which are asked differs)."""
    model, tok = tiny
    enc = PairEncoder(tok, ChatFormat.from_tokenizer(tok))
    req = RankRequest(("Haunted Manor", "Cursed Crypt II"), tuple(TITLES[:6]))
    n = len(req.candidates)
    pivot = pivot_pairs(n, 2)
    (sub,), (whole,) = (pair_answers(model, enc, [req], [p]) for p in (pivot, ordered_pairs(n)))
    m_sub, m_all = margin_matrix(n, pivot, *sub), margin_matrix(n, ordered_pairs(n), *whole)
    assert m_sub[:, :2] == pytest.approx(m_all[:, :2], abs=1e-4)
    assert len(pivot) == 2 * 2 * 5 - 2 and not math.isnan(float(m_all.abs().sum()))


def test_a_catalogue_file_is_json_lines_of_objects(tmp_path):
    path = tmp_path / "c.jsonl"
    write_catalogue(path, CATALOGUE)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[0] == {"title": "A", "count": 5} and len(lines) == 5


def test_a_cached_rerank_is_fused_as_recommend_fuses_with_the_hybrid_there_when_read():
    """topk_eval keeps the LLM's scores of a rerank, not its fusion: fused_now makes the fused
    scores `recommend` gives from them, with whichever hybrid (or none: reciprocal rank) the
    Recommender has when they are read."""
    from dmporec.topk_eval import fused_now, rerank_user

    rng = torch.Generator().manual_seed(1)
    utility = dict(zip(TITLES, torch.randn(30, generator=rng).tolist(), strict=True))
    rec = llm_only(big_catalogue())
    user = record("u", ["Film 00", "Film 03"], "Film 09", [])
    candidates = (TITLES[4:16], 5)  # Film 09 among 12 unrated titles
    result = rerank_user(rec, StubRanker(utility), user, candidates, m=8, rerank="pivot", pivots=2)
    assert "fused" not in result and len(result["llm"]) == 8
    among = [rec.catalogue.index(t) for t in candidates[0]]
    for hybrid in (
        rec.hybrid,
        Hybrid(("llm", "popularity"), (1.0, 2.0), (0.3, 1.5), 1.0, 1, 1, 1.0),
        None,
    ):
        rec.hybrid = hybrid
        plan = rec.plan(["Film 00", "Film 03"], k=8, m=8, user_id="u", among=among)
        doc = rec.finish(plan, StubRanker(utility))
        expected = {it["title"]: it["fused_score"] for it in doc["recommended"]}
        got = dict(zip(result["retrieved"], fused_now(rec, result, user), strict=True))
        assert got == pytest.approx(expected, abs=1e-5)
        assert doc["fusion"] == ("rrf" if hybrid is None else "hybrid")
    # A rerank that scored nothing (rerank none) has nothing to fuse.
    assert fused_now(rec, {**result, "llm": [None] * 8}, user) == [None] * 8
