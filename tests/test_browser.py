"""The real site in a real browser: Debian's chromium driven by Playwright against a live server.

The test client cannot tell whether the file input, the radio buttons, the CSRF tokens, the
stylesheet, the CSP and the gallery buttons work together; a person clicking can. Every request
that leaves 127.0.0.1 is blocked and reported, so the pages are also proven to work offline.

Set ``CHORUS_SCREENSHOTS=docs`` to also write the README screenshots (a stacking result and the
admin page after some simulated A/B traffic) into that folder.
"""

from __future__ import annotations

import os
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from flask import Flask
from playwright.sync_api import (
    Browser,
    ConsoleMessage,
    Locator,
    Page,
    Response,
    Route,
    expect,
    sync_playwright,
)
from werkzeug.serving import make_server

from ensembles.bundle import EnsembleBundle

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1200, "height": 900}
SCREENSHOT_DIR = os.environ.get("CHORUS_SCREENSHOTS")
#: (choice on the home page, strategy, feedback: "yes", or "no" = "No, it was: <another class>")
MODES = [
    ("Bagging", "bagging", "yes"),
    ("Boosting", "boosting", "no"),
    ("Stacking", "stacking", "yes"),
    ("A/B Test (Random)", "ab", "no"),
]
ARM_TITLES = {"Bagging": "bagging", "Boosting": "boosting"}
#: Headings of the admin page's two summary tables.
AB_TABLE = "A/B test: Bagging vs Boosting"
DIRECT_TABLE = "Direct traffic (not in the experiment)"


@dataclass
class LiveServer:
    """The app served over real HTTP on a free local port."""

    app: Flask
    url: str


@dataclass
class Session:
    """One browser context plus what went wrong in it that no assertion would see."""

    page: Page
    offsite: list[str] = field(default_factory=list)
    failed_assets: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)

    def assert_clean(self) -> None:
        """No request left the machine, every asset loaded, no CSP violation was logged."""
        assert self.offsite == [], f"requests outside the app: {self.offsite}"
        assert self.failed_assets == [], f"assets that failed to load: {self.failed_assets}"
        assert self.console_errors == [], f"browser console errors: {self.console_errors}"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One headless chromium for the module: starting it costs more than the tests."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium (make chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def live_server(make_app: Callable[..., Flask]) -> Iterator[LiveServer]:
    """The real app with CSRF on and the real error pages, served from a thread."""
    app = make_app(WTF_CSRF_ENABLED=True, PROPAGATE_EXCEPTIONS=False)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="live-server", daemon=True)
    thread.start()
    try:
        yield LiveServer(app, f"http://127.0.0.1:{server.server_port}")
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()


@pytest.fixture
def open_session(browser: Browser, live_server: LiveServer) -> Iterator[Callable[..., Session]]:
    """Open browser contexts on the live server (optionally logged in); closed afterwards."""
    contexts = []

    def open_one(**options: object) -> Session:
        context = browser.new_context(base_url=live_server.url, viewport=VIEWPORT, **options)
        contexts.append(context)
        session = Session(context.new_page())

        def local_only(route: Route) -> None:
            if route.request.url.startswith(live_server.url + "/"):
                route.continue_()
            else:
                session.offsite.append(route.request.url)
                route.abort()

        def on_response(response: Response) -> None:
            # A refused form answers 4xx on purpose; a stylesheet or image must not.
            if response.status >= 400 and response.request.resource_type != "document":
                session.failed_assets.append(f"{response.status} {response.url}")

        def on_console(message: ConsoleMessage) -> None:
            # Failed loads are judged by on_response, which knows documents from assets.
            if message.type == "error" and not message.text.startswith("Failed to load resource"):
                session.console_errors.append(message.text)

        context.route("**/*", local_only)
        session.page.on("response", on_response)
        session.page.on("console", on_console)
        return session

    yield open_one
    for context in contexts:
        context.close()


def choice(page: Page, title: str) -> Locator:
    """The home page's radio button whose label starts with ``title`` (its summary follows)."""
    # Playwright sends the pattern between slashes, so "A/B" needs its slash escaped too.
    pattern = "^" + re.escape(title).replace("/", r"\/")
    return page.get_by_role("radio", name=re.compile(pattern))


def card(page: Page, heading: str) -> Locator:
    """The ``section.card`` whose heading is exactly ``heading``."""
    title = page.get_by_role("heading", name=heading, exact=True)
    return page.locator("section.card").filter(has=title)


def summary_table(page: Page, heading: str) -> dict[str, dict[str, str]]:
    """An admin summary table as {row label: {column title: cell text}}."""
    table = card(page, heading).locator("table.summary")
    expect(table).to_be_visible()
    columns = [text.strip() for text in table.locator("thead th").all_text_contents()[1:]]
    rows = {}
    for row in table.locator("tbody tr").all():
        cells = [text.strip() for text in row.locator("td").all_text_contents()]
        rows[row.locator("th").text_content().strip()] = dict(zip(columns, cells, strict=True))
    return rows


def check_result(page: Page, bundle: EnsembleBundle, title: str, strategy: str) -> dict[str, str]:
    """Check everything a result page must show; return its prediction id, label and arm."""
    head = page.locator(".result-head")
    expect(head.locator(".eyebrow")).to_contain_text(title)
    labels = page.locator(".bar-row .bar-label").all_text_contents()
    assert labels == list(bundle.classes)  # every class, in order
    widths = [float(w) for w in page.locator(".bar-fill").evaluate_all(
        "bars => bars.map(b => b.getAttribute('width'))"
    )]
    assert sum(widths) == pytest.approx(100.0, abs=0.1)  # the bars are the probabilities
    top = page.locator(".bar-row.top")
    expect(top).to_have_count(1)
    label = top.locator(".bar-label").text_content()
    assert top.locator("svg.bar").bounding_box()["width"] > 150  # drawn, not collapsed
    expect(head.locator("h1")).to_contain_text(label)
    confidence = top.locator(".bar-value").text_content()
    expect(head.locator(".confidence")).to_have_text(f"{confidence} confident")

    arm = strategy
    if strategy == "ab":
        served_by = re.search(r"served by (\w+)", head.locator(".eyebrow").text_content())
        assert served_by, "the A/B result must say which arm served"
        arm = ARM_TITLES[served_by.group(1)]
        expect(page.locator("p.note")).to_contain_text(f"served by {served_by.group(1)}")
    if strategy == "stacking":  # the real meta-model answers; the fallback is tested elsewhere
        n = len(bundle.ensembles["stacking"].member_names_)
        expect(page.get_by_text(f"The meta-model combined all {n} members")).to_be_visible()

    votes = card(page, "Members' votes").locator("tbody tr")
    names = [text.strip() for text in votes.locator("td:nth-child(1)").all_text_contents()]
    assert names == bundle.ensembles[arm].member_names_
    for vote in votes.locator("td:nth-child(2)").all_text_contents():
        assert vote.strip() in bundle.classes

    meta = page.locator("p.meta")
    expect(meta).to_contain_text(bundle.version)
    expect(meta).to_contain_text(re.compile(r"\d+\.\d ms"))
    prediction_id = meta.locator("code").first.text_content()
    assert re.fullmatch(r"[0-9a-f]{32}", prediction_id)
    return {"id": prediction_id, "label": label, "arm": arm}


def give_feedback(page: Page, result: dict[str, str], answer: str, classes: list[str]) -> bool:
    """Answer "Was this right?" through the page's controls; return whether it was right."""
    if answer == "yes":
        page.get_by_role("button", name="Yes", exact=True).click()
        truth, flash = result["label"], "the prediction was right."
    else:
        truth = next(name for name in classes if name != result["label"])
        select = page.get_by_label("True class")
        expect(select).to_have_value("")  # "choose the true class", never the prediction
        select.select_option(label=truth)
        page.get_by_role("button", name="No, it was:").click()
        flash = f"the prediction was wrong: it was {truth}."
    expect(page).to_have_url(re.compile(f"/predictions/{result['id']}$"))
    expect(page.get_by_role("status")).to_have_text(f"Thanks! Recorded that {flash}")
    expect(page.locator(".card .alert")).to_contain_text(
        f"Recorded: the true class is {truth}"
    )
    return truth == result["label"]


def test_four_modes_gallery_feedback_and_admin(
    open_session: Callable[..., Session],
    live_server: LiveServer,
    app_bundle: EnsembleBundle,
    image_png: bytes,
    admin_credentials: dict[str, str],
) -> None:
    """A person's whole visit: four uploads with feedback, one sample, then the admin numbers."""
    visitor = open_session()
    page = visitor.page
    classes = list(app_bundle.classes)
    expected: Counter[tuple[str, str, str]] = Counter()  # (table, column, row) -> count

    for title, strategy, answer in MODES:
        page.goto("/")
        expect(page.locator("body")).to_have_css("background-color", "rgb(246, 247, 251)")
        choice(page, title).check()
        page.get_by_label("Photo of one clothing item").set_input_files(
            {"name": "trousers.png", "mimeType": "image/png", "buffer": image_png}
        )
        page.get_by_role("button", name="Classify").click()
        result = check_result(page, app_bundle, title, strategy)
        if strategy == "stacking" and SCREENSHOT_DIR:
            page.screenshot(path=Path(SCREENSHOT_DIR) / "screenshot-result.png", full_page=True)
        right = give_feedback(page, result, answer, classes)
        table = AB_TABLE if strategy == "ab" else DIRECT_TABLE
        column = result["arm"].capitalize()
        expected.update({(table, column, "Served"): 1, (table, column, "Labelled"): 1})
        expected[(table, column, "Correct")] += right

    page.goto("/")
    sample = page.locator("button.sample").first
    assert sample.locator("img").evaluate("img => img.naturalWidth") == 28  # data: URI allowed
    sample_label = sample.locator("span").text_content()
    sample.click()  # one click: the default choice (Bagging) answers a known test image
    expect(page.locator(".result-head .alert")).to_contain_text(
        f"This test image is labelled {sample_label}: the prediction is"
    )
    check_result(page, app_bundle, "Bagging", "bagging")
    expected[(DIRECT_TABLE, "Bagging", "Served")] += 1
    visitor.assert_clean()

    admin = open_session(http_credentials=admin_credentials)
    response = admin.page.goto("/admin")
    assert response is not None and response.status == 200
    for (table, column, row), count in expected.items():
        assert summary_table(admin.page, table)[row][column] == str(count), (table, column, row)
    ab_served = summary_table(admin.page, AB_TABLE)["Served"]
    assert sum(int(n) for n in ab_served.values()) == 1
    expect(card(admin.page, "Recent predictions").locator("tbody tr")).to_have_count(len(MODES) + 1)
    admin.assert_clean()

    if SCREENSHOT_DIR:  # some A/B traffic with feedback, so the chart and tests have data
        outcome = live_server.app.test_cli_runner().invoke(args=["simulate", "--n", "150"])
        assert outcome.exit_code == 0, outcome.output
        admin.page.reload()
        admin.page.screenshot(path=Path(SCREENSHOT_DIR) / "screenshot-admin.png", full_page=True)


def test_a_text_file_named_png_is_refused_on_the_form(
    open_session: Callable[..., Session],
) -> None:
    """A bad upload comes back as the same form with a clear message and the choice kept."""
    visitor = open_session()
    page = visitor.page
    page.goto("/")
    choice(page, "Stacking").check()
    page.get_by_label("Photo of one clothing item").set_input_files(
        {"name": "holiday.png", "mimeType": "image/png", "buffer": b"Dear diary, today I..."}
    )
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        page.get_by_role("button", name="Classify").click()
    assert answer.value.status == 400
    expect(page.get_by_role("alert")).to_contain_text("The file is text, not an image.")
    expect(choice(page, "Stacking")).to_be_checked()
    expect(page.get_by_role("button", name="Classify")).to_be_visible()
    visitor.assert_clean()


def test_the_forms_pass_csrf_because_it_is_enforced(
    open_session: Callable[..., Session], image_png: bytes
) -> None:
    """Without its token the same upload is refused, so the passing forms really carry one."""
    page = open_session().page
    page.goto("/")  # the session cookie exists; only the form's token is missing below
    answer = page.request.post(
        "/predict",
        multipart={
            "strategy": "bagging",
            "image": {"name": "trousers.png", "mimeType": "image/png", "buffer": image_png},
        },
    )
    assert answer.status == 400
    assert "CSRF token is missing" in answer.text()
