"""Order-debiased evaluation: both listing orders scored with one history prefix, summed."""

from dataclasses import replace

import pytest

from dmporec.config import EvalConfig
from dmporec.prompts import positive_listed_first
from dmporec.stages.evaluate import score_pairs, write_eval


def test_both_orders_add_the_swapped_listing(tiny, tiny_cfg, demo, tmp_path):
    model, tokenizer = tiny
    records = demo.test[:3]
    both = score_pairs(model, tokenizer, tiny_cfg, records, EvalConfig(orders="both"), 0)
    listed = score_pairs(model, tokenizer, tiny_cfg, records, EvalConfig(), 0)
    swapped_records = [
        replace(r, positive_first=[not positive_listed_first(r, i, 0) for i in range(r.k)])
        for r in records
    ]
    swapped = score_pairs(model, tokenizer, tiny_cfg, swapped_records, EvalConfig(), 0)
    assert len(both) == len(listed) == sum(r.k for r in records)
    for b, a, s in zip(both, listed, swapped, strict=True):
        assert b["chosen_logp"] == pytest.approx(a["chosen_logp"], abs=1e-4)
        assert b["chosen_logp_swapped"] == pytest.approx(s["chosen_logp"], abs=1e-4)
        assert b["rejected_logp_swapped"] == pytest.approx(s["rejected_logp"], abs=1e-4)
        assert b["positive_listed_first"] != s["positive_listed_first"]

    m = write_eval(both, EvalConfig(orders="both", n_boot=20), tmp_path, "tiny")
    wins = [
        r["chosen_logp"] + r["chosen_logp_swapped"]
        > r["rejected_logp"] + r["rejected_logp_swapped"]
        for r in both
    ]
    assert m["orders"] == "both" and m["accuracy"] == pytest.approx(sum(wins) / len(wins))
    listed_m = write_eval(listed, EvalConfig(n_boot=20), tmp_path, "tiny")
    # The position diagnostics describe the listed order either way.
    assert m["first_listed_rate"] == listed_m["first_listed_rate"]
    assert m["accuracy_listed_order"] == listed_m["accuracy"]
