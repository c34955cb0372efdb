"""The HTML player in a real headless Chromium: next, the arrow keys, play, reset."""
import os
import re
import shutil

import pytest

from tinygraph.stepper import Stepper
from tinygraph.viz import models_zoo

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def player(tmp_path_factory):
    if CHROMIUM is None:
        pytest.skip("needs Chromium (Debian package `chromium`)")
    sync_api = pytest.importorskip("playwright.sync_api")
    if shutil.which("dot") is None and shutil.which("graphviz-pure") is None:
        pytest.skip("needs a Graphviz renderer (dot or graphviz-pure)")
    from tinygraph.viz.stepper_html import stepper_html

    stepper = Stepper(models_zoo.build("elman", steps=2).loss)
    path = tmp_path_factory.mktemp("player") / "walk.html"
    page_text = stepper_html(stepper, str(path), view="ops")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        outside = []
        # the file must need nothing from anywhere: record (and refuse) any other request
        page.route(re.compile(r"^(?!file:).*"), lambda route: (outside.append(route.request.url),
                                                               route.abort()))
        page.goto(path.as_uri())
        yield page, stepper, page_text, outside
        browser.close()


def _visible_current(page):
    current = page.locator("#diagram .frame:not([hidden]) g.node.current")
    assert current.count() == 1
    return current.locator("title").text_content()


def test_file_is_self_contained(player):
    page, _, text, outside = player
    assert "<script src" not in text and "<link" not in text and "<img" not in text
    # the diagram is drawn once (one layout for every step), not once per step
    assert text.count("<svg") == text.count("</svg>") == 1
    page.wait_for_load_state("load")
    assert outside == []


def test_next_moves_the_highlight_and_the_formula(player):
    page, stepper, _, _ = player
    page.click("#reset")
    last = len(stepper)
    assert page.inner_text("#step-index") == f"0 / {last}"
    page.click("#next")
    assert page.inner_text("#step-index") == f"1 / {last}"
    first_node, first_formula = _visible_current(page), page.inner_text("#formula")
    assert first_formula.startswith("∂L/∂L = 1")
    page.click("#next")
    assert page.inner_text("#step-index") == f"2 / {last}"
    assert _visible_current(page) != first_node
    assert page.inner_text("#formula") != first_formula
    assert stepper.events[1].label in page.inner_text("#node-label")
    # the nodes done so far are marked as processed in the visible picture
    assert page.locator("#diagram .frame:not([hidden]) g.node.processed").count() >= 2
    page.keyboard.press("ArrowRight")
    assert page.inner_text("#step-index") == f"3 / {last}"
    page.keyboard.press("ArrowLeft")
    page.click("#prev")
    assert page.inner_text("#step-index") == f"1 / {last}"
    assert _visible_current(page) == first_node
    assert page.locator("#diagram g.node.processed").count() == 1  # only the loss so far


def _size(box):
    return box["width"], box["height"]


def test_classes_follow_the_stepper_on_one_stable_layout(player):
    page, stepper, _, _ = player
    page.click("#reset")
    assert page.locator("#diagram g.node.current, #diagram g.node.processed").count() == 0
    size = _size(page.locator("#diagram svg").bounding_box())
    done = []
    for k in range(1, 6):
        page.click("#next")
        done.append(page.locator("#diagram g.node.processed").count())
        # the highlighted node is drawn in the highlight colour by the stylesheet
        stroke = page.locator("#diagram g.node.current :is(ellipse, polygon)").first.evaluate(
            "e => getComputedStyle(e).stroke")
        assert stroke == "rgb(224, 49, 49)"  # #e03131
        # no layout jumps: the same picture at every step (the text above it may move it)
        assert _size(page.locator("#diagram svg").bounding_box()) == size
    assert done == sorted(done) and done[-1] > done[0]
    page.click("#prev")
    assert page.locator("#diagram g.node.processed").count() == done[-2]


def test_play_reaches_the_end_and_the_timeline_fills(player):
    page, stepper, _, _ = player
    page.click("#reset")
    assert page.locator("#timeline .tstep.reached").count() == 0
    page.evaluate("document.getElementById('player').setAttribute('data-interval', '10')")
    page.click("#play")
    last = len(stepper)
    page.wait_for_function(
        f"document.getElementById('step-index').textContent === '{last} / {last}'", timeout=15000)
    assert "at-end" in page.get_attribute("#player", "class")
    assert page.locator("#timeline .tstep").count() == page.locator("#timeline .tstep.reached").count() == 2
    assert page.is_visible("#summary") and "∇W" in page.inner_text("#summary")
    assert page.inner_text("#play") == "play"  # stopped by itself
    page.click("#reset")
    assert page.inner_text("#step-index") == f"0 / {last}"
