"""The real site in a real browser: Debian's chromium driven by Playwright against a live server.

The test client cannot tell whether the file input, the radio buttons, the CSRF tokens, the
stylesheet, the CSP and the gallery buttons work together; a person clicking can. Every request
that leaves 127.0.0.1 is blocked and reported, so the pages are also proven to work offline.

The admin console is driven the same way: an experiment is created in its form, traffic is sent
through the live server's JSON API, and the weights are changed in the console while it runs.

Set ``CHORUS_SCREENSHOTS=docs`` to also write the README screenshots (a stacking result and the
``ab`` experiment page after some simulated A/B traffic) into that folder.
"""

from __future__ import annotations

import gc
import os
import re
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from playwright.sync_api import (
    APIRequestContext,
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
    ("Cascade", "cascade", "no"),
    ("A/B Test (Random)", "ab", "no"),
]
#: The home page's choices on a fresh database: every built-in, in catalogue order.
BUILTIN_CHOICES = [title for title, _, _ in MODES]
ARM_TITLES = {"Bagging": "bagging", "Boosting": "boosting"}
#: Headings of the overview's per-strategy table and an experiment page's per-arm table.
TRAFFIC_TABLE = "Traffic by requested strategy"
ARMS_TABLE = "Arms"
#: The experiment the console test creates, and its title on the home page.
FLIP = "weights-flip"
FLIP_TITLE = "Weights flip"
#: The experiment the report test runs and decides.
REPORTED = "reported"
#: Experiments whose answer says which arm served.
EXPERIMENTS = {"ab", FLIP}
#: A phone's viewport (an iPhone 12-15's CSS width).
PHONE = {"width": 390, "height": 844}
#: axe-core, vendored from its npm package (tests/vendor/axe-core/README.md).
AXE = Path(__file__).resolve().parent / "vendor" / "axe-core" / "axe.min.js"
#: A file well over the server's request limit (MAX_CONTENT_LENGTH), as a camera photo can be.
HUGE_UPLOAD = 30 * 2**20


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


@pytest.fixture
def app_bundle(shipped_bundle: EnsembleBundle) -> EnsembleBundle:
    """The committed artifact, not the fake bank: this is the site as shipped (and the README
    screenshots must show its real version and confidences)."""
    return shipped_bundle


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


def closed_before_sent(app: Flask) -> Callable[[dict, Callable], list[bytes]]:
    """Werkzeug's dev server skips a response's close() when the browser resets the connection
    (its drain read raises first), leaving a static file open: hand it bytes, the file closed."""

    def wsgi(environ: dict, start_response: Callable) -> list[bytes]:
        body = app(environ, start_response)
        try:
            return [b"".join(body)]
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()

    return wsgi


@pytest.fixture
def live_server(make_app: Callable[..., Flask]) -> Iterator[LiveServer]:
    """The real app with CSRF on and the real error pages, served from a thread."""
    app = make_app(WTF_CSRF_ENABLED=True, PROPAGATE_EXCEPTIONS=False)
    server = make_server("127.0.0.1", 0, closed_before_sent(app), threaded=True)
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
        context = browser.new_context(base_url=live_server.url, **{"viewport": VIEWPORT, **options})
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
        # Let late asset loads (an error page's favicon) finish first: a response the browser
        # abandons mid-send leaves werkzeug's open static file to the garbage collector.
        for page in context.pages:
            page.wait_for_load_state("networkidle")
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


def shares_served(page: Page) -> dict[str, str]:
    """An experiment page's ``table#shares`` as {arm: share served, as the page prints it}."""
    cells = page.locator("table#shares td[data-arm]")
    return {cell.get_attribute("data-arm"): cell.text_content().strip() for cell in cells.all()}


def history(page: Page) -> list[dict[str, str]]:
    """An experiment page's ``table#events`` as one {column title: cell text} per event."""
    table = page.locator("table#events")
    expect(table).to_be_visible()
    columns = [text.strip() for text in table.locator("thead th").all_text_contents()]
    return [
        dict(zip(columns, [t.strip() for t in row.locator("td").all_text_contents()], strict=True))
        for row in table.locator("tbody tr").all()
    ]


def pct(share: float) -> str:
    """A share as the console prints it (one decimal)."""
    return f"{share * 100:.1f}%"


def api_predict(
    request: APIRequestContext, image: bytes, strategy: str, client_id: str
) -> dict[str, Any]:
    """One prediction through the live server's JSON API, as an outside client sends it."""
    answer = request.post(
        "/api/v1/predict",
        multipart={
            "image": {"name": "trousers.png", "mimeType": "image/png", "buffer": image},
            "strategy": strategy,
            "client_id": client_id,
        },
    )
    assert answer.status == 200, answer.text()
    return answer.json()


def api_results(request: APIRequestContext, name: str, headers: dict[str, str]) -> dict[str, Any]:
    """``GET /api/v1/experiments/<name>/results`` with the admin's Basic auth."""
    answer = request.get(f"/api/v1/experiments/{name}/results", headers=headers)
    assert answer.status == 200, answer.text()
    return answer.json()


def served_counts(results: dict[str, Any]) -> dict[str, int]:
    """{arm: served} from a results body."""
    return {arm: numbers["served"] for arm, numbers in results["arms"].items()}


def check_result(page: Page, bundle: EnsembleBundle, title: str, strategy: str) -> dict[str, str]:
    """Check everything a result page must show; return its prediction id, label and arm."""
    expect(page).to_have_url(re.compile(r"/predictions/[0-9a-f]{32}$"))  # Post/Redirect/Get
    head = page.locator(".result-head")
    expect(head.locator(".eyebrow")).to_contain_text(title)
    labels = page.locator(".bar-row .bar-label").all_text_contents()
    assert len(labels) == 3 and set(labels) <= set(bundle.classes)  # the top three
    widths = [
        float(w)
        for w in page.locator(".bar-fill").evaluate_all(
            "bars => bars.map(b => b.getAttribute('width'))"
        )
    ]
    assert widths == sorted(widths, reverse=True)  # most probable first
    everything = page.locator("details.all-classes")
    expect(everything.locator("table")).to_be_hidden()  # all ten are one click away
    everything.locator("summary").click()
    names = everything.locator("tbody td:first-child").all_text_contents()
    assert sorted(names) == sorted(bundle.classes)
    top = page.locator(".bar-row.top")
    expect(top).to_have_count(1)
    expect(page.locator(".bar-row").first).to_have_class(re.compile(r"\btop\b"))
    label = top.locator(".bar-label").text_content()
    assert top.locator("svg.bar").bounding_box()["width"] > 150  # drawn, not collapsed
    expect(head.locator("h1")).to_contain_text(label)
    confidence = top.locator(".bar-value").text_content()
    expect(head.locator(".confidence")).to_have_text(f"{confidence} confident")

    arm = strategy
    if strategy in EXPERIMENTS:
        served_by = re.search(r"served by (\w+)", head.locator(".eyebrow").text_content())
        assert served_by, "an experiment's result must say which arm served"
        arm = ARM_TITLES[served_by.group(1)]
        note = page.locator("p.note").filter(has_text=f"Experiment {title}")
        expect(note).to_contain_text(f"served by {served_by.group(1)}")
    if strategy == "stacking":  # the real meta-model answers; the fallback is tested elsewhere
        n = len(bundle.ensembles["stacking"].member_names_)
        expect(page.get_by_text(f"The meta-model combined all {n} members")).to_be_visible()
    members = bundle.ensembles[arm].member_names_
    if strategy == "cascade":  # it says how far down its list of models it went; those voted
        note = page.locator("p.note").filter(has_text="The cascade stopped")
        pattern = re.compile(rf"The cascade stopped after (\d+) of its {len(members)} models\.")
        expect(note).to_have_text(pattern)
        used = int(pattern.fullmatch(note.text_content().strip()).group(1))
        assert 1 <= used <= len(members)
        members = members[:used]

    votes = card(page, "Members' votes").locator("tbody tr")
    names = [text.strip() for text in votes.locator("td:nth-child(1)").all_text_contents()]
    assert names == members
    for vote in votes.locator("td:nth-child(2)").all_text_contents():
        assert vote.strip() in bundle.classes

    meta = page.locator("p.meta")
    expect(meta).to_contain_text(bundle.version)
    expect(meta).to_contain_text(re.compile(r"\d+\.\d ms"))
    prediction_id = meta.locator("code").first.text_content()
    assert re.fullmatch(r"[0-9a-f]{32}", prediction_id)
    return {"id": prediction_id, "label": label, "arm": arm}


def give_feedback(page: Page, result: dict[str, str], answer: str, classes: list[str]) -> bool:
    """Answer "Was this right?" through the page's controls; return whether it was right.

    The answer is recorded in place: the page is not reloaded (a marker set on ``window``
    survives), one confirmation appears inside the feedback card and takes the focus.
    """
    page.evaluate("window.__samePage = true")
    send = page.get_by_role("button", name="Send correction")
    expect(send).to_be_disabled()  # "No" needs a class first
    if answer == "yes":
        page.get_by_role("button", name="Yes", exact=True).click()
        truth, flash = result["label"], "the prediction was right."
    else:
        truth = next(name for name in classes if name != result["label"])
        select = page.get_by_label("No, it was:")
        expect(select).to_have_value("")  # "choose the true class", never the prediction
        select.select_option(label=truth)
        expect(send).to_be_enabled()
        send.click()
        flash = f"the prediction was wrong: it was {truth}."
    status = card(page, "Feedback").locator("#feedback-status")
    expect(status).to_have_text(f"Thanks! Recorded that {flash}")
    expect(status).to_be_focused()
    expect(page).to_have_url(re.compile(f"/predictions/{result['id']}$"))
    assert page.evaluate("window.__samePage === true"), "feedback reloaded the page"
    expect(page.get_by_text("Thanks! Recorded")).to_have_count(1)  # confirmed once
    expect(page.get_by_text("Recorded: the true class is")).to_have_count(0)
    expect(page.get_by_role("img", name="The 28×28 image the model saw")).to_be_visible()
    return truth == result["label"]


def test_the_live_server_closes_a_static_file_when_the_client_hangs_up(
    live_server: LiveServer,
) -> None:
    """A browser resetting a connection mid-asset (chromium does for favicons) left werkzeug's
    dev server holding the file open; warnings are errors here, so the leak failed a test."""
    port = int(live_server.url.rsplit(":", 1)[1])
    for _ in range(200):
        with socket.create_connection(("127.0.0.1", port)) as client:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
            client.sendall(b"GET /static/style.css HTTP/1.1\r\nHost: x\r\n\r\n")
            assert client.recv(12).startswith(b"HTTP/1.1 200")
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    time.sleep(0.5)
    gc.collect()  # an unclosed file's ResourceWarning is raised here, failing the test


def test_every_mode_gallery_feedback_and_admin(
    open_session: Callable[..., Session],
    live_server: LiveServer,
    app_bundle: EnsembleBundle,
    image_png: bytes,
    admin_credentials: dict[str, str],
    admin_headers: dict[str, str],
) -> None:
    """A person's whole visit: an upload per mode with feedback, one sample, then the admin."""
    visitor = open_session()
    page = visitor.page
    classes = list(app_bundle.classes)
    traffic: Counter[tuple[str, str]] = Counter()  # (row, requested strategy) -> count
    ab_arms: Counter[tuple[str, str]] = Counter()  # (row, arm of ab) -> count

    for title, strategy, answer in MODES:
        response = page.goto("/")
        assert response is not None
        assert response.headers["content-security-policy"].startswith("default-src 'self'")
        expect(page.locator("body")).to_have_css("background-color", "rgb(246, 247, 251)")
        expect(page.locator(".choice .choice-title")).to_have_text(BUILTIN_CHOICES)
        choice(page, title).check()
        page.get_by_label("Photo of one clothing item").set_input_files(
            {"name": "trousers.png", "mimeType": "image/png", "buffer": image_png}
        )
        page.get_by_role("button", name="Classify").click()
        result = check_result(page, app_bundle, title, strategy)
        if strategy == "stacking" and SCREENSHOT_DIR:
            page.screenshot(path=Path(SCREENSHOT_DIR) / "screenshot-result.png", full_page=True)
        right = give_feedback(page, result, answer, classes)
        traffic.update({("Served", strategy): 1, ("Labelled", strategy): 1})
        traffic[("Correct", strategy)] += right
        if strategy == "ab":
            ab_arms.update({("Served", result["arm"]): 1, ("Labelled", result["arm"]): 1})
            ab_arms[("Correct", result["arm"])] += right

    page.goto("/")
    sample = page.locator("button.sample").first
    assert sample.locator("img").evaluate("img => img.naturalWidth") == 28  # data: URI allowed
    sample_label = sample.locator("span").text_content()
    sample.click()  # one click: the default choice (Bagging) answers a known test image
    expect(page.locator(".result-head .alert")).to_contain_text(
        f"This test image is labelled {sample_label}: the prediction is"
    )
    check_result(page, app_bundle, "Bagging", "bagging")
    traffic[("Served", "bagging")] += 1
    visitor.assert_clean()

    # The overview: traffic per requested strategy, the experiments, the latest predictions.
    admin = open_session(http_credentials=admin_credentials)
    response = admin.page.goto("/admin")
    assert response is not None and response.status == 200
    by_strategy = summary_table(admin.page, TRAFFIC_TABLE)
    assert list(by_strategy["Served"]) == [strategy for _, strategy, _ in MODES]
    for row, numbers in by_strategy.items():
        if row in ("Served", "Labelled", "Correct"):
            for strategy, cell in numbers.items():
                assert cell == str(traffic[(row, strategy)]), (row, strategy)
    expect(admin.page.get_by_text(f"{len(MODES) + 1} prediction requests in all")).to_be_visible()
    expect(card(admin.page, "Recent predictions").locator("tbody tr")).to_have_count(len(MODES) + 1)
    card(admin.page, "Experiments").get_by_role("link", name="ab", exact=True).click()

    # The built-in A/B experiment's page: the one A/B visit, by the arm that served it.
    expect(admin.page).to_have_url(re.compile(r"/admin/experiments/ab$"))
    expect(admin.page.locator("#experiment-status")).to_have_text("running")
    arms = summary_table(admin.page, ARMS_TABLE)
    assert list(arms["Served"]) == ["bagging", "boosting"]
    for row in ("Served", "Labelled", "Correct"):
        assert arms[row] == {arm: str(ab_arms[(row, arm)]) for arm in arms[row]}, row
    served_arm = next(arm for (row, arm) in ab_arms if row == "Served")
    assert shares_served(admin.page) == {
        arm: "100.0%" if arm == served_arm else "0.0%" for arm in ("bagging", "boosting")
    }

    # More A/B traffic with feedback (half right), so both arms have numbers to compare.
    request = admin.page.request
    for i in range(24):
        body = api_predict(request, image_png, "ab", f"ab-client-{i}")
        assert body["experiment"] == "ab" and body["arm"] in ("bagging", "boosting")
        truth = body["label"] if i % 2 else next(c for c in classes if c != body["label"])
        answer = request.post(
            f"/api/v1/predictions/{body['prediction_id']}/feedback", data={"label": truth}
        )
        assert answer.status == 200
        assert answer.json() == {"correct": truth == body["label"], "counted": True}
    results = api_results(request, "ab", admin_headers)
    served = served_counts(results)
    assert sum(served.values()) == 25 and min(served.values()) > 0, served
    assert {"difference", "p_value", "prob_boosting_better"} <= set(results)  # first release's
    admin.page.reload()
    assert summary_table(admin.page, ARMS_TABLE)["Served"] == {
        arm: str(n) for arm, n in served.items()
    }
    assert shares_served(admin.page) == {
        arm: pct(numbers["share"]) for arm, numbers in results["arms"].items()
    }
    comparison = card(admin.page, "Against the control (bagging)").locator("tbody tr")
    expect(comparison).to_have_count(1)
    expect(comparison.locator("td").first).to_have_text("boosting")
    expect(comparison).to_contain_text(re.compile(r"\(95% CI [−-]?\d+\.\d\d% to [−-]?\d+\.\d\d%\)"))
    expect(card(admin.page, "How much more data?")).to_contain_text(
        re.compile(r"more labelled predictions per arm are\s+needed|have enough labelled")
    )
    accuracy_chart = card(admin.page, "Accuracy over labelled outcomes").locator("svg.chart")
    expect(accuracy_chart).to_be_visible()  # the accuracy chart has data
    admin.assert_clean()

    if SCREENSHOT_DIR:  # more A/B traffic with feedback, so the chart and tests have data
        outcome = live_server.app.test_cli_runner().invoke(args=["simulate", "--n", "150"])
        assert outcome.exit_code == 0, outcome.output
        admin.page.reload()
        admin.page.screenshot(path=Path(SCREENSHOT_DIR) / "screenshot-admin.png", full_page=True)


def test_the_console_creates_an_experiment_and_its_weights_change_live(
    open_session: Callable[..., Session],
    app_bundle: EnsembleBundle,
    image_png: bytes,
    admin_credentials: dict[str, str],
    admin_headers: dict[str, str],
) -> None:
    """Create a weighted experiment in the console, send traffic, flip its weights in the
    console, and see the new traffic follow: in the results API, the shares and the history."""
    admin = open_session(http_credentials=admin_credentials)
    page, request = admin.page, admin.page.request
    page.goto("/admin/experiments")
    form = page.locator("section#create")

    # A body the API refuses comes back as the same form, with the reason and the input kept.
    page.locator("#exp-name").fill(FLIP)
    page.locator("#exp-strategy").select_option("weighted")
    page.locator("#exp-models").fill("bagging = 1\nnope = 1")
    with page.expect_response(lambda r: r.request.method == "POST") as refused:
        form.get_by_role("button", name="Create experiment").click()
    assert refused.value.status == 400
    expect(page).to_have_url(re.compile(r"/admin/experiments$"))
    expect(form.get_by_role("alert")).to_contain_text("nope")
    expect(page.locator("#exp-name")).to_have_value(FLIP)
    expect(page.locator("#exp-strategy")).to_have_value("weighted")
    expect(page.locator("#exp-models")).to_have_value("bagging = 1\nnope = 1")
    expect(page.get_by_role("link", name=FLIP, exact=True)).to_have_count(0)
    # The console's forms carry a CSRF token because they must: the same post without one fails.
    forged = request.post(
        "/admin/experiments",
        form={"name": FLIP, "strategy": "weighted", "models": "bagging = 1\nboosting = 0"},
        headers=admin_headers,
    )
    assert forged.status == 400 and "CSRF token is missing" in forged.text()

    # All traffic to bagging.
    page.locator("#exp-models").fill("bagging = 1\nboosting = 0")
    with page.expect_response(lambda r: r.request.method == "POST") as created:
        form.get_by_role("button", name="Create experiment").click()
    assert created.value.status == 303
    expect(page).to_have_url(re.compile(f"/admin/experiments/{FLIP}$"))
    expect(page.get_by_role("status")).to_have_text(f"Created experiment {FLIP}.")
    expect(page.locator("#experiment-status")).to_have_text("running")
    expect(page.locator("#weight-bagging")).to_have_value("1")
    expect(page.locator("#weight-boosting")).to_have_value("0")
    assert shares_served(page) == {"bagging": "—", "boosting": "—"}  # no traffic yet
    change = page.locator("section#change")
    for button in ("Set weights", "Pause", "Roll back to control", "Stop", "Promote"):
        expect(change.get_by_role("button", name=button, exact=True)).to_be_visible()
    expect(change.get_by_label("Promote")).to_have_value("bagging")

    # A person finds it on the home page; everyone else comes through the API.
    page.goto("/")
    expect(page.locator(".choice .choice-title")).to_have_text([*BUILTIN_CHOICES, FLIP_TITLE])
    choice(page, FLIP_TITLE).check()
    page.get_by_label("Photo of one clothing item").set_input_files(
        {"name": "trousers.png", "mimeType": "image/png", "buffer": image_png}
    )
    page.get_by_role("button", name="Classify").click()
    assert check_result(page, app_bundle, FLIP_TITLE, FLIP)["arm"] == "bagging"
    before = Counter(api_predict(request, image_png, FLIP, f"client-{i}")["arm"] for i in range(59))
    assert before == {"bagging": 59}
    assert served_counts(api_results(request, FLIP, admin_headers)) == {
        "bagging": 60,
        "boosting": 0,
    }
    page.goto(f"/admin/experiments/{FLIP}")
    assert shares_served(page) == {"bagging": "100.0%", "boosting": "0.0%"}
    assert summary_table(page, ARMS_TABLE)["Served"] == {"bagging": "60", "boosting": "0"}

    # Flip the weights in the console: all new traffic to boosting.
    page.locator("#weight-bagging").fill("0")
    page.locator("#weight-boosting").fill("1")
    with page.expect_response(lambda r: r.request.method == "POST") as changed:
        page.locator("#weights-form").get_by_role("button", name="Set weights").click()
    changed_at = time.monotonic()
    assert changed.value.status == 303
    expect(page).to_have_url(re.compile(f"/admin/experiments/{FLIP}$"))
    expect(page.get_by_role("status")).to_contain_text(f"Experiment {FLIP}: weights done")
    expect(page.locator("#weight-bagging")).to_have_value("0")
    expect(page.locator("#weight-boosting")).to_have_value("1")
    # Workers re-read definitions within a second; this single process sees it at once anyway.
    time.sleep(max(0.0, 1.1 - (time.monotonic() - changed_at)))

    # Returning clients (sticky until now on bagging) and new ones alike go to boosting.
    clients = [f"client-{i}" for i in range(20)] + [f"client-{i}" for i in range(100, 120)]
    after = Counter(api_predict(request, image_png, FLIP, c)["arm"] for c in clients)
    assert after == {"boosting": 40}
    results = api_results(request, FLIP, admin_headers)
    assert served_counts(results) == {"bagging": 60, "boosting": 40}
    page.reload()
    assert shares_served(page) == {"bagging": "60.0%", "boosting": "40.0%"}
    assert summary_table(page, ARMS_TABLE)["Served"] == {"bagging": "60", "boosting": "40"}

    # The history says who changed what.
    events = history(page)
    assert [(e["What"], e["Who"]) for e in events] == [
        ("weights changed", "admin"),  # newest first
        ("created", "admin"),
    ]
    assert events[0]["Change"] == "weights: bagging=1, boosting=0 → bagging=0, boosting=1"
    assert [(e["kind"], e["actor"]) for e in results["events"]] == [
        ("weights_changed", "admin"),
        ("created", "admin"),
    ]
    admin.assert_clean()


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


def test_a_decided_experiments_report_reads_its_verdict_and_interval(
    open_session: Callable[..., Session],
    image_png: bytes,
    admin_credentials: dict[str, str],
    admin_headers: dict[str, str],
) -> None:
    """An experiment run through the API by sticky clients and promoted: its frozen report in
    the console says who won and when, and draws the interval it prints (also at 390 px)."""
    admin = open_session(http_credentials=admin_credentials)
    page, request = admin.page, admin.page.request
    created = request.post(
        "/api/v1/inference/ensemble",
        data={
            "name": REPORTED,
            "strategy": "weighted",
            "models": [{"model_id": "bagging", "weight": 1}, {"model_id": "boosting", "weight": 1}],
        },
        headers=admin_headers,
    )
    assert created.status == 201, created.text()
    for i in range(48):
        body = api_predict(request, image_png, REPORTED, f"reader-{i % 24}")
        wrong = next(c for c in body["probabilities"] if c != body["label"])
        truth = body["label"] if i % 3 else wrong
        answer = request.post(
            f"/api/v1/predictions/{body['prediction_id']}/feedback", data={"label": truth}
        )
        assert answer.status == 200, answer.text()
    decided = request.post(
        f"/api/v1/experiments/{REPORTED}/promote",
        data={"model": "boosting", "reason": "boosting answered as well"},
        headers=admin_headers,
    )
    assert decided.status == 200, decided.text()
    report = request.get(f"/api/v1/experiments/{REPORTED}/report", headers=admin_headers).json()
    day = report["decision"]["at"][:10]

    # From the experiment's page to its report by keyboard.
    page.goto(f"/admin/experiments/{REPORTED}")
    expect(page.locator(".decision-banner")).to_contain_text("Promoted: boosting")
    page.get_by_role("link", name="Open the report on its own page").focus()
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(f"/admin/experiments/{REPORTED}/report$"))
    expect(page.locator(".report-verdict")).to_contain_text(
        f"Outcome: boosting promoted on {day}. Why: boosting answered as well"
    )
    row = page.locator("#report-verdicts li[data-arm='boosting']")
    comparison = report["comparisons"]["boosting"]
    expect(row.locator(".verdict")).to_have_text(comparison["verdict"])
    interval = row.locator(".interval-text").text_content().strip()
    match = re.fullmatch(
        r"([+−]?\d+\.\d) points \(always-valid 95% interval ([+−]?\d+\.\d) to ([+−]?\d+\.\d)\)",
        interval,
    )
    assert match, interval
    low, high = comparison["sequential"]["ci_low"], comparison["sequential"]["ci_high"]
    printed = [float(g.replace("−", "-")) for g in match.groups()]
    assert printed == pytest.approx(
        [100 * comparison["absolute"]["difference"], 100 * low, 100 * high], abs=0.051
    )
    bar = row.locator("svg.interval")
    expect(bar).to_be_visible()
    assert "always-valid 95% interval" in bar.get_attribute("aria-label")
    traffic = page.locator("#report-traffic tbody tr")
    expect(traffic).to_have_count(2)
    assert sum(int(t) for t in traffic.locator("td:nth-child(2)").all_text_contents()) == 48
    admin.assert_clean()

    # The same report on a 390 px phone: nothing wider than the screen, the bar still drawn.
    phone = open_session(http_credentials=admin_credentials)
    phone.page.set_viewport_size({"width": 390, "height": 844})
    phone.page.goto(f"/admin/experiments/{REPORTED}/report")
    assert phone.page.evaluate("document.documentElement.scrollWidth") <= 390
    expect(phone.page.locator("#report-verdicts svg.interval").first).to_be_visible()
    phone.assert_clean()


# --- the pages as a stakeholder meets them: PRG, 413, phone, accessibility -----------------------


def upload_on(page: Page, path: str, image: bytes, title: str | None = None) -> None:
    """Open an upload page, (choose ``title``,) attach ``image`` and press Classify."""
    page.goto(path)
    if title is not None:
        choice(page, title).check()
    page.get_by_label("Photo of one clothing item").set_input_files(
        {"name": "trousers.png", "mimeType": "image/png", "buffer": image}
    )
    page.get_by_role("button", name="Classify").click()
    expect(page).to_have_url(re.compile(r"/predictions/[0-9a-f]{32}$"))


def total_predictions(request: APIRequestContext, headers: dict[str, str]) -> int:
    answer = request.get("/api/v1/stats", headers=headers)
    assert answer.status == 200, answer.text()
    return answer.json()["total_predictions"]


def test_reloading_a_result_never_uploads_again(
    open_session: Callable[..., Session], image_png: bytes, admin_headers: dict[str, str]
) -> None:
    """The upload answers 303 to its result page: a reload (or Back and Forward) is a GET."""
    visitor = open_session()
    page = visitor.page
    posts: list[str] = []
    page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)
    upload_on(page, "/boosting", image_png)
    assert len(posts) == 1
    result = page.url
    before = total_predictions(page.request, admin_headers)
    assert before == 1
    for _ in range(2):
        page.reload()
        expect(page.locator(".result-head h1")).to_be_visible()
    page.go_back()
    page.go_forward()
    expect(page).to_have_url(result)
    assert len(posts) == 1, posts
    assert total_predictions(page.request, admin_headers) == before
    expect(page.get_by_role("img", name="Your upload")).to_be_visible()
    page.get_by_role("link", name="Classify another image").click()
    expect(page).to_have_url(re.compile(r"/boosting$"))  # back where the person came from
    visitor.assert_clean()


def test_an_oversized_photo_keeps_the_strategy_with_and_without_javascript(
    open_session: Callable[..., Session], tmp_path: Path
) -> None:
    """With JS the size is checked before anything is sent; without it the server's 413 page
    still has the chosen strategy."""
    huge = tmp_path / "camera.jpg"  # a path: Playwright hands big files over without copying
    with huge.open("wb") as out:
        out.truncate(HUGE_UPLOAD)
    visitor = open_session()
    page = visitor.page
    posts: list[str] = []
    page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)
    page.goto("/")
    choice(page, "Stacking").check()
    page.get_by_label("Photo of one clothing item").set_input_files(huge)
    error = page.locator("[data-size-error]")
    expect(error).to_have_text(re.compile(r"^The file is 30\.0 MB; the limit is 10 MB\."))
    page.get_by_role("button", name="Classify").click()
    expect(error).to_be_visible()
    assert posts == [] and page.url.endswith("/")
    expect(choice(page, "Stacking")).to_be_checked()
    visitor.assert_clean()

    plain = open_session(java_script_enabled=False)
    page = plain.page
    page.goto("/")
    choice(page, "Stacking").check()
    page.get_by_label("Photo of one clothing item").set_input_files(huge)
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        page.get_by_role("button", name="Classify").click()
    assert answer.value.status == 413
    expect(page.get_by_role("alert")).to_contain_text("The upload is larger than 10 MB")
    expect(choice(page, "Stacking")).to_be_checked()
    plain.assert_clean()


def test_the_result_fits_a_phone(open_session: Callable[..., Session], image_png: bytes) -> None:
    """At 390 px nothing scrolls sideways, the feedback control sits inside its card and the
    members' table shows every column."""
    visitor = open_session(viewport=PHONE, is_mobile=True, has_touch=True)
    page = visitor.page
    overflow = "document.scrollingElement.scrollWidth"
    page.goto("/")
    assert page.evaluate(overflow) <= PHONE["width"]
    upload_on(page, "/boosting", image_png)
    assert page.evaluate(overflow) <= PHONE["width"]
    feedback = card(page, "Feedback")
    box, form = feedback.bounding_box(), feedback.locator("form.feedback").bounding_box()
    assert box is not None and form is not None
    assert box["x"] <= form["x"] and form["x"] + form["width"] <= box["x"] + box["width"]
    for control in feedback.locator("button, select").all():
        inner = control.bounding_box()
        assert inner is not None and inner["x"] + inner["width"] <= box["x"] + box["width"]
    scroller = card(page, "Members' votes").locator(".table-scroll")
    assert scroller.evaluate("el => el.scrollWidth <= el.clientWidth"), "a column is hidden"
    last = card(page, "Members' votes").locator("thead th").last
    expect(last).to_have_text("Alpha (α)")
    edge = last.bounding_box()
    assert edge is not None and edge["x"] + edge["width"] <= PHONE["width"]
    visitor.assert_clean()


def axe_violations(page: Page) -> list[dict[str, Any]]:
    """axe-core's serious and critical violations on the page as it is now."""
    page.add_script_tag(path=str(AXE))
    return page.evaluate(
        """async () => {
            const results = await axe.run(document, {resultTypes: ["violations"]});
            return results.violations
                .filter(v => v.impact === "serious" || v.impact === "critical")
                .map(v => ({id: v.id, impact: v.impact, help: v.help,
                            nodes: v.nodes.slice(0, 5).map(n => n.target.join(" "))}));
        }"""
    )


def test_the_pages_pass_axe_and_work_from_the_keyboard(
    open_session: Callable[..., Session],
    image_png: bytes,
    admin_credentials: dict[str, str],
) -> None:
    """Zero serious or critical axe-core violations on the home page, a strategy page, a result
    (before and after feedback) and the admin pages; a skip link; visible focus on the cards."""
    # axe is injected as an inline script, which the site's CSP (rightly) forbids.
    visitor = open_session(bypass_csp=True, http_credentials=admin_credentials)
    page = visitor.page
    found: dict[str, list[dict[str, Any]]] = {}

    page.goto("/")
    page.keyboard.press("Tab")
    skip = page.get_by_role("link", name="Skip to content")
    expect(skip).to_be_focused()
    expect(skip).to_be_in_viewport()
    page.keyboard.press("Enter")
    expect(page.locator("main#content")).to_be_focused()
    strategy_card = page.locator("a.strategy-card").first
    strategy_card.focus()
    assert strategy_card.evaluate("el => getComputedStyle(el).outlineStyle") == "solid"
    found["/"] = axe_violations(page)
    page.goto("/stacking")
    found["/stacking"] = axe_violations(page)
    upload_on(page, "/", image_png, "Boosting")
    found["result"] = axe_violations(page)
    page.get_by_role("button", name="Yes", exact=True).click()
    expect(page.locator("#feedback-status")).to_be_focused()
    found["result after feedback"] = axe_violations(page)
    for i in range(12):  # labelled A/B traffic, so the admin pages draw their charts and legends
        body = api_predict(page.request, image_png, "ab", f"axe-client-{i:02d}")
        verdict = {"label": body["label"] if i % 2 else (body["class_index"] + 1) % 10}
        answer = page.request.post(
            f"/api/v1/predictions/{body['prediction_id']}/feedback", data=verdict
        )
        assert answer.status == 200, answer.text()
    for path in ("/admin", "/admin/experiments", "/admin/experiments/ab", "/admin/feedback"):
        response = page.goto(path)
        assert response is not None and response.status == 200, path
        found[path] = axe_violations(page)
        if path == "/admin/experiments/ab":  # the Boosting legend was orange at 3.0:1
            expect(page.locator(".legend .key.s1").first).to_be_visible()
    assert {path: v for path, v in found.items() if v} == {}
    visitor.assert_clean()


def test_an_image_can_be_dropped_pasted_or_taken_and_is_previewed(
    open_session: Callable[..., Session], image_png: bytes
) -> None:
    """The drop zone takes a dropped or pasted file into the form and previews it; the phone
    camera button is there; the upload still goes through the same form."""
    visitor = open_session()
    page = visitor.page
    page.goto("/bagging")
    camera = page.locator("input[data-camera]")
    assert camera.get_attribute("capture") == "environment"
    expect(page.locator("label.camera")).to_be_visible()
    preview = page.get_by_role("img", name="Preview of the chosen image")
    expect(preview).to_be_hidden()
    for event in ("drop", "paste"):
        page.evaluate(
            """([event, bytes]) => {
                const file = new File([new Uint8Array(bytes)], event + ".png", {type: "image/png"});
                const data = new DataTransfer();
                data.items.add(file);
                const zone = document.querySelector("[data-drop-zone]");
                const e = event === "drop"
                    ? new DragEvent("drop", {dataTransfer: data, bubbles: true, cancelable: true})
                    : new ClipboardEvent("paste", {clipboardData: data, bubbles: true,
                                                   cancelable: true});
                zone.dispatchEvent(e);
            }""",
            [event, list(image_png)],
        )
        expect(preview).to_be_visible()
        assert preview.evaluate("img => img.src.startsWith('data:image/png')")
        expect(page.locator("[data-preview-caption]")).to_contain_text(f"{event}.png")
        assert page.locator("#image").evaluate("input => input.files[0].name") == f"{event}.png"
    page.get_by_role("button", name="Classify").click()
    expect(page).to_have_url(re.compile(r"/predictions/[0-9a-f]{32}$"))
    expect(page.get_by_role("img", name="Your upload")).to_be_visible()
    visitor.assert_clean()
