"""The page at / of `dmporec serve`, in a real headless Chromium (Debian's chromium and
chromium-driver, driven by Selenium) against a live server on 127.0.0.1 with the tiny model."""

import shutil
import socket
import threading
import time
from collections import Counter

import pytest
import uvicorn

from dmporec.baselines import Popularity
from dmporec.catalogue import Catalogue, CatalogueItem
from dmporec.ranker import Ranker
from dmporec.records import TitleNormalization
from dmporec.rerank import Recommender
from dmporec.serve import Limits, create_app

webdriver = pytest.importorskip("selenium.webdriver")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMEDRIVER is None or shutil.which("chromium") is None,
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)",
)


def serve(ranker, **kwargs):
    app = create_app(ranker, Limits(), max_batch=4, batch_wait_ms=5, **kwargs)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
    while not server.started:
        time.sleep(0.01)
    return server, f"http://127.0.0.1:{sock.getsockname()[1]}/"


def browser():
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1000,900",
    ):
        options.add_argument(arg)
    return webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))


def _fill(driver, field, text):
    box = driver.find_element("id", field)
    box.clear()
    box.send_keys(text)


def _wait(condition, seconds=120):
    end = time.time() + seconds
    while time.time() < end:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError("timed out")


def shelf() -> Recommender:
    """A catalogue of 14 titles, retrieved by popularity (the first most counted)."""
    items = tuple(CatalogueItem(f"Shelf Title {i}", str(i), 14 - i) for i in range(14))
    popularity = Popularity(Counter({item.title: item.count for item in items}))
    return Recommender(
        Catalogue(items, "shelf"), TitleNormalization(), "popularity", {"popularity": popularity}
    )


@pytest.fixture(scope="module")
def page(tiny, tiny_cfg):
    ranker = Ranker.create(tiny[0], tiny[1], tiny_cfg, "tiny-qwen3")
    server, url = serve(ranker, recommender=shelf())
    driver = browser()
    yield driver, url
    driver.quit()
    server.should_exit = True


def test_the_page_loads_ranks_and_explains(page):
    driver, url = page
    driver.get(url)
    assert driver.title.startswith("dmporec")
    _wait(lambda: driver.find_element("id", "model").text == "tiny-qwen3")
    _fill(driver, "history", "Heat\nCasino\nUp")
    _fill(driver, "candidates", "Jaws\nAlien\nFargo\nBabe")
    driver.find_element("id", "rank").click()
    _wait(lambda: len(driver.find_elements("css selector", "#ranked li")) == 4)
    names = [e.text for e in driver.find_elements("css selector", "#ranked .name")]
    scores = [float(e.text) for e in driver.find_elements("css selector", "#ranked .score")]
    assert sorted(names) == ["Alien", "Babe", "Fargo", "Jaws"]
    assert scores == sorted(scores, reverse=True) and abs(sum(scores) - 2.0) < 1e-2  # sum N/2
    widths = [
        e.get_attribute("style") for e in driver.find_elements("css selector", "#ranked .fill")
    ]
    assert all("width" in w for w in widths)
    # Why the top one: the reasons from its scores (/v1/explain's `why`), and their cost.
    _wait(lambda: driver.find_element("id", "explanation").is_displayed())
    why = driver.find_element("id", "explanation").text
    assert why.startswith(f"{names[0]}: ") and (
        ": because you watched " in why or ": no history title" in why
    ), why
    cost = driver.find_element("id", "explain-cost").text
    assert cost.startswith(f"{(3 + 1) * 2 * 3} prompts, ") and "against 3 others" in cost, cost


def test_the_page_recommends_and_explains_the_top_one_against_the_next_three(page):
    driver, url = page
    driver.get(url)
    _fill(driver, "history", "Heat\nCasino\nUp")
    driver.find_element("id", "recommend").click()
    _wait(lambda: len(driver.find_elements("css selector", "#ranked li")) == 10)
    top = driver.find_elements("css selector", "#ranked .name")[0].text
    _wait(lambda: driver.find_element("id", "explanation").is_displayed())
    assert driver.find_element("id", "explanation").text.startswith(f"{top}: ")
    cost = driver.find_element("id", "explain-cost").text
    assert cost.startswith(f"{(3 + 1) * 2 * 3} prompts, ") and "against 3 others" in cost, cost


def test_the_page_shows_a_validation_error(page):
    driver, url = page
    driver.get(url)
    _fill(driver, "candidates", "Jaws\nJaws")
    driver.find_element("id", "rank").click()
    _wait(lambda: driver.find_element("id", "error").is_displayed())
    assert "duplicate candidate" in driver.find_element("id", "error").text
    assert not driver.find_element("id", "result").is_displayed()
