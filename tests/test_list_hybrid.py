"""dmporec.list_hybrid: the hybrid fitted on unrated candidate lists. The margins of a list by
hand, lists whose positive was not reranked left out, and a fit that learns what ranks unrated
lists (popularity) where the LLM's scores are noise."""

import numpy as np
import pytest

from dmporec.hybrid import LLM
from dmporec.list_hybrid import fit_list_hybrid, list_components, list_fused, list_margins
from dmporec.records import Item, Record


class Table:
    """A classic scorer that gives each title a fixed score (popularity: a count)."""

    def __init__(self, name: str, scores: dict[str, float]) -> None:
        self.name, self.scores = name, scores

    def score(self, record: Record, candidates) -> list[float]:
        return [self.scores.get(t, 0.0) for t in candidates]


def record(user: str) -> Record:
    return Record(user, [Item("H")], Item("?"), [])


def test_margins_of_a_list_by_hand():
    counts = {"A": 0.0, "B": np.e - 1, "C": np.e**2 - 1}  # log(1 + count): 0, 1, 2
    scorers = {"popularity": Table("popularity", counts), "bpr-mf": Table("bpr-mf", {"A": 5})}
    result = {"retrieved": ["A", "B", "C"], "llm": [1.0, 3.0, 0.0], "positive_position": 2}
    not_reranked = {"retrieved": ["A", "C"], "llm": [0.0, 0.0], "positive_position": 3}
    components = list_components({"random": None, **scorers, "sasrec": None})
    assert components == (LLM, "popularity", "bpr-mf")  # random and SASRec never fused
    margins, users, left_out = list_margins(
        [result, not_reranked], [record("u1"), record("u2")], scorers, components
    )
    # The positive B against A and against C, each component's item score difference.
    assert margins[LLM].tolist() == [2.0, 3.0]
    assert margins["popularity"] == pytest.approx([1.0, -1.0])
    assert margins["bpr-mf"].tolist() == [-5.0, 0.0]
    assert users.tolist() == ["u1", "u1"] and left_out == 1


def test_the_fit_learns_what_ranks_unrated_lists():
    """Lists where the positive is a popular title among obscure ones and the LLM's scores are
    noise: the fit puts its weight on popularity, and on held-out lists the fused order ranks
    the positive first far more often than the LLM's alone."""
    rng = np.random.default_rng(0)
    titles = [f"t{i}" for i in range(400)]
    counts = {t: float(rng.integers(0, 50)) for t in titles}
    scorers = {
        "popularity": Table("popularity", counts),
        "bpr-mf": Table("bpr-mf", {t: rng.normal() for t in titles}),
    }

    def lists(n: int, offset: int):
        results, records = [], []
        for u in range(n):
            picked = list(rng.choice(titles, 10, replace=False))
            pos = max(range(10), key=lambda i: counts[picked[i]] + rng.normal(0, 5))
            results.append(
                {
                    "retrieved": picked,
                    "llm": rng.normal(size=10).tolist(),
                    "positive_position": pos + 1,
                }  # fmt: skip
            )
            records.append(record(f"u{offset + u}"))
        return results, records

    fit_results, fit_records = lists(60, 0)
    hybrid, left_out = fit_list_hybrid(fit_results, fit_records, scorers)
    assert left_out == 0 and hybrid.components == (LLM, "popularity", "bpr-mf")
    weights = dict(zip(hybrid.components, hybrid.weights, strict=True))
    assert weights["popularity"] > 1.0 and weights["popularity"] > 5 * abs(weights[LLM])
    classic, _ = fit_list_hybrid(fit_results, fit_records, scorers, llm=False)
    assert classic.components == ("popularity", "bpr-mf")
    held_results, held_records = lists(100, 1000)
    fused_first = llm_first = 0
    for result, rec in zip(held_results, held_records, strict=True):
        pos = result["positive_position"] - 1
        fused_first += int(np.argmax(list_fused(hybrid, result, rec, scorers)) == pos)
        llm_first += int(np.argmax(result["llm"]) == pos)
    assert fused_first >= 50 and llm_first <= 25
