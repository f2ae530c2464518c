"""The app in a real headless chromium against a real server, over libvirt's test driver
and stand-in agents (no QEMU): login, every view, streaming chat, the subsystem
switcher, an artifact run and its produced file, confirmation before destructive actions,
and no request off the machine.
The same page against real VMs: ``tests/vm/test_app.py``.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import uvicorn
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from api import create_app
from api.auth import ensure_token
from core.config import Settings
from guest_agent.protocol import ChatCompletionChunk, ChatCompletionRequest, Subsystem
from guest_agent.protocol.runs import Language, SourceFile
from images.catalog import ImageManifest
from orchestrator.artifacts.tables import ArtifactRunRow
from orchestrator.host import Host
from tests.browser import (
    chromium,
    console_errors,
    js,
    log_in,
    off_loopback,
    refused_login,
    requested_urls,
    screenshot,
    visible,
    wait_for,
)
from tests.fakes import StandInAgent, meter_of

VIEWS = ("chat", "research", "projects", "sessions", "artifacts", "collab", "dashboard")
TOKEN_GAP_S = 0.08
# Every visible form control and button has a name a screen reader can say.
UNLABELLED = """
return [...document.querySelectorAll('input, select, textarea, button')]
  .filter((c) => c.offsetParent !== null && c.type !== 'hidden')
  .filter((c) => !(c.labels && c.labels.length) && !c.getAttribute('aria-label')
                 && !c.getAttribute('aria-labelledby') && !(c.textContent || '').trim()
                 && !c.title)
  .map((c) => c.outerHTML.slice(0, 80));
"""  # the stand-in's pace, so streaming is visible as separate arrivals


@dataclass
class Served:
    base: str
    token: str
    host: Host


@pytest.fixture
def served(settings: Settings, host: Host, image: ImageManifest,
           monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    """``somnus serve``'s app over the test driver, with a chat and an artifacts VM."""
    for stage in ("domain", "ssh", "cloud_init", "agent"):
        setattr(settings, f"timeout_{stage}_s", 1.0)  # no guest ever answers here
    original = StandInAgent.chat_stream

    def paced(self: StandInAgent, request: ChatCompletionRequest
              ) -> Iterator[ChatCompletionChunk]:
        for chunk in original(self, request):
            time.sleep(TOKEN_GAP_S)
            yield chunk
    monkeypatch.setattr(StandInAgent, "chat_stream", paced)
    host.vms.create("chat", Subsystem.CHAT, 256, wait=False)
    host.vms.create("artifacts", Subsystem.ARTIFACTS, 256, wait=False)
    host.swap.activate("chat")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app = create_app(host=host, api_host="127.0.0.1")
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield Served(f"http://127.0.0.1:{port}", ensure_token(settings), host)
    server.should_exit = True
    thread.join(timeout=30)


@pytest.fixture
def page(served: Served) -> Iterator[WebDriver]:
    with chromium() as driver:
        log_in(driver, served.base, served.token)
        yield driver
        assert console_errors(driver) == []


def test_a_wrong_token_is_refused_and_the_right_one_logs_in(served: Served) -> None:
    with chromium() as driver:
        assert "wrong token" in refused_login(driver, served.base).lower()
        screenshot(driver, "unit-login-refused")
        assert driver.get_cookies() == []
        log_in(driver, served.base, served.token)
        cookie = driver.get_cookie("somnus_session")
        assert cookie and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert js(driver, "return document.cookie") == ""  # HttpOnly: the page cannot read it
        visible(driver, "#chat-input")


def test_every_view_renders_offline_at_both_sizes(page: WebDriver, served: Served) -> None:
    for view in VIEWS:
        page.get(f"{served.base}/#/{view}")
        heading = visible(page, "#view h1, #view h2")
        assert heading.text, view
        assert js(page, UNLABELLED) == [], view
        wait_for(page, lambda d: "MiB" in d.find_element(By.ID, "budget-bar").text
                 or "GiB" in d.find_element(By.ID, "budget-bar").text, 10, "the budget bar")
        screenshot(page, f"unit-{view}-1280x800")
    page.set_window_size(500, 800)
    for view in ("chat", "dashboard"):
        page.get(f"{served.base}/#/{view}")
        visible(page, "#view h1, #view h2")
        assert js(page, "return document.documentElement.scrollWidth") <= 520, view
        screenshot(page, f"unit-{view}-500x800")
    urls = requested_urls(page)
    assert any("/app/static/js/views/dashboard.js" in u for u in urls)
    assert off_loopback(urls) == []


def test_a_chat_answer_streams_token_by_token_and_stop_keeps_the_partial_answer(
        page: WebDriver) -> None:
    visible(page, "#chat-input").send_keys("hello there stand-in" + Keys.ENTER)
    wait_for(page, lambda d: d.find_elements(By.CSS_SELECTOR, ".answer")
             and not d.find_elements(By.CSS_SELECTOR, ".answer[aria-busy]"), 30, "the answer")
    answer = page.find_elements(By.CSS_SELECTOR, ".answer")[-1]
    assert "hello there stand-in" in answer.text
    times = [t["t"] for t in js(page, "return window.__somnusTokenTimes")]
    assert len(times) >= 4
    # One paint per token, spread over the answer: streamed, not delivered at the end.
    assert times[-1] - times[0] >= (len(times) - 2) * TOKEN_GAP_S * 1000 * 0.5
    answer.find_element(By.CSS_SELECTOR, "details.report summary").click()
    assert "context tokens" in answer.find_element(By.CSS_SELECTOR, "details.report").text
    page.find_element(By.ID, "chat-input").send_keys(
        "a much longer question so that the answer takes long enough to stop" + Keys.ENTER)
    wait_for(page, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".answer[aria-busy]")) == 1
             and js(d, "return window.__somnusTokenTimes.length") > 0, 20, "a second answer")
    page.find_element(By.ID, "chat-stop").click()
    stopped = wait_for(page, lambda d: d.find_elements(By.CSS_SELECTOR, ".answer .stopped"), 10,
                       "the stopped badge")
    assert stopped
    screenshot(page, "unit-chat-streamed")


def test_switching_subsystem_shows_the_swap_and_moves_the_foreground(
        page: WebDriver, served: Served) -> None:
    meter_of(served.host).set(6144, 300)
    chip = "#tiers li.chip[data-vm='{}']"
    wait_for(page, lambda d: "★" in d.find_element(By.CSS_SELECTOR, chip.format("chat")).text,
             10, "chat marked as the foreground")
    page.find_element(By.CSS_SELECTOR, '#switcher a[data-view="artifacts"]').click()
    status = wait_for(page, lambda d: "artifacts in front" in (
        text := d.find_element(By.ID, "swap-status").text) and text, 20, "the swap's end")
    assert "swapped in" in status and " s" in status
    assert served.host.store.foreground() == "artifacts"
    wait_for(page, lambda d: "★" in d.find_element(By.CSS_SELECTOR,
                                                   chip.format("artifacts")).text,
             10, "the star on the artifacts VM")
    assert page.find_element(By.CSS_SELECTOR,
                             '#switcher a[aria-current="page"]').get_attribute(
        "data-view") == "artifacts"


def test_delete_asks_first_and_cancel_deletes_nothing(page: WebDriver, served: Served) -> None:
    page.get(served.base + "/#/dashboard")
    delete = visible(page, "#vm-table tr[data-vm='artifacts'] button.delete")
    delete.click()
    dialog = visible(page, "dialog.confirm")
    assert "artifacts" in dialog.text
    screenshot(page, "unit-dashboard-confirm")
    dialog.find_element(By.CSS_SELECTOR, "button.cancel").click()
    wait_for(page, lambda d: not d.find_elements(By.CSS_SELECTOR, "dialog.confirm"), 5,
             "the dialog to close")
    time.sleep(0.5)  # a delete, had one been sent, would have reached the store by now
    assert served.host.store.find_vm("artifacts") is not None
    page.find_element(By.CSS_SELECTOR, "#vm-table tr[data-vm='artifacts'] button.delete").click()
    visible(page, "dialog.confirm button.danger").click()
    wait_for(page, lambda d: served.host.store.find_vm("artifacts") is None, 20,
             "the VM to be deleted")
    wait_for(page, lambda d: not d.find_elements(By.CSS_SELECTOR,
                                                 "#vm-table tr[data-vm='artifacts']"),
             20, "the row to go")


def test_a_run_from_the_page_links_its_produced_file_by_the_run_id_it_streamed(
        page: WebDriver, served: Served) -> None:
    code = ("import sys, time\ntext = sys.stdin.read()\nprint('started', flush=True)\n"
            "time.sleep(1)\nopen('out.txt', 'w').write(text)\n")
    served.host.artifacts.create("job", Language.PYTHON,
                                 [SourceFile(path="main.py", content=code)])
    page.get(f"{served.base}/#/artifacts/job")
    visible(page, "#artifact-stdin").send_keys("typed into the page")
    visible(page, "#artifact-run").click()
    wait_for(page, lambda d: "started" in d.find_element(By.ID, "artifact-output").text, 60,
             "the run's first line")
    # Another client's run of the same artifact starts meanwhile: it is the newest run.
    store = served.host.artifacts.store
    store.save_run(ArtifactRunRow(id="someone-else", artifact="job", version=1,
                                  vm_name="artifacts"))
    (link,) = wait_for(page, lambda d: d.find_elements(By.CSS_SELECTOR, "#artifact-files a"), 60,
                       "the produced file's link")
    (mine,) = [run for run in store.runs("job") if run.id != "someone-else"]
    href = link.get_attribute("href")
    assert href == f"{served.base}/artifacts/runs/{mine.id}/file?path=out.txt"
    assert js(page, "return fetch(arguments[0]).then((r) => r.text())", href) == (
        "typed into the page")
