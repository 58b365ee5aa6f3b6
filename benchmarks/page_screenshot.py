"""Screenshot of the page `dmporec serve` shows at /, ranking a real example with a trained run.

    .venv/bin/python benchmarks/page_screenshot.py [--model runs/demo] [--out docs/page.png]

Needs Debian's chromium and chromium-driver and selenium (the test suite's page test uses the same).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from test_page import _fill, _wait, browser, serve  # noqa: E402

from dmporec.ranker import load_ranker  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="runs/demo")
    parser.add_argument("--out", default=str(ROOT / "docs" / "page.png"))
    args = parser.parse_args()
    ranker = load_ranker(args.model)
    server, url = serve(ranker)
    driver = browser()
    try:
        driver.get(url)
        # A demo test user's history; candidates: its positive, its negative and three other
        # test users' positives (titles of the demo catalogue).
        from dmporec.records import read_records

        users = read_records(Path(args.model) / "data" / "test.jsonl")[:4]
        candidates = [users[0].positive.title, users[0].negatives[0].title]
        candidates += [u.positive.title for u in users[1:] if u.positive.title not in candidates]
        _fill(driver, "history", "\n".join(i.title for i in users[0].history))
        _fill(driver, "candidates", "\n".join(candidates))
        driver.find_element("id", "rank").click()
        _wait(lambda: driver.find_element("id", "explanation").is_displayed(), 600)
        time.sleep(0.5)
        height = driver.execute_script("return document.body.scrollHeight")
        driver.set_window_size(1000, height + 400)
        time.sleep(1.0)
        driver.save_screenshot(args.out)
        print(f"wrote {args.out}; positive: {candidates[0]!r}")
    finally:
        driver.quit()
        server.should_exit = True


if __name__ == "__main__":
    main()
