"""The TRL cell of benchmarks/shared_prefix.py (--peers) on the tiny model; runs where TRL is
installed (`make peers`, PYTHONPATH=.venv-peers), skipped elsewhere: TRL is no dependency."""

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "dmpo"


@pytest.mark.skipif(
    importlib.util.find_spec("trl") is None, reason="TRL not installed (make peers)"
)
@pytest.mark.skipif(not DATA.is_dir(), reason="needs ../shared/data/dmpo")
@pytest.mark.filterwarnings("ignore::FutureWarning")  # TRL 1.16's own use of deprecated names
@pytest.mark.parametrize("precompute", [False, True])
def test_trl_cell_trains_the_same_users_rows(precompute):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import shared_prefix

    result = shared_prefix.trl_cell(3, 2, 1, precompute, model_name="builtin:tiny-qwen3")
    assert result["method"] == ("trl-precompute" if precompute else "trl")
    assert result["users"] == 2 and result["users_per_s"] > 0 and result["tokens"] > 0
    assert len(result["losses"]) == 1 and result["losses"][0] > 0
    # TRL precomputes in its constructor, for every row of the warm-up and timed steps
    if precompute:
        assert result["reference_once_s"] > 0 and result["reference_users"] == 4
    else:
        assert result["reference_once_s"] is None and result["reference_users"] == 0
