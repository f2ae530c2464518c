"""The app in a real headless chromium against a real ``somnus serve`` and a real VM:
login, a chat answer streamed from the model inside the VM, the dashboard following
libvirt's lifecycle events live and asking before a delete, and not one request off
the machine. Switching subsystems and the artifact overlay are in ``test_artifacts.py``
(where the artifacts VM runs), research progress in ``test_research.py``.
"""

from __future__ import annotations

import pytest
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from orchestrator.host import Host
from tests.browser import chromium, js, refused_login, screenshot, visible, wait_for
from tests.vm.conftest import AppServer

pytestmark = pytest.mark.vm

ANSWER_TOKENS = 6  # a short turn: decoding in a TCG guest takes seconds per token


@pytest.fixture(scope="module")
def page(app_page: WebDriver, booted_vm: str, host: Host) -> WebDriver:
    host.swap.activate(booted_vm)
    return app_page


def test_a_wrong_token_is_refused(app_server: AppServer) -> None:
    with chromium() as driver:
        assert "wrong token" in refused_login(driver, app_server.base).lower()
        assert driver.get_cookies() == []


def test_a_chat_answer_streams_into_the_page_from_the_model_in_the_vm(
        page: WebDriver, booted_vm: str, host: Host) -> None:
    wait_for(page, lambda d: d.find_element(By.ID, "chat-vm").get_attribute("value")
             == booted_vm, 30, "the chat to pick the foreground VM")
    tokens = visible(page, "#chat-max-tokens")
    tokens.clear()
    tokens.send_keys(str(ANSWER_TOKENS))
    page.find_element(By.ID, "chat-input").send_keys("Say hello." + Keys.ENTER)
    wait_for(page, lambda d: d.find_elements(By.CSS_SELECTOR, ".answer")
             and not d.find_elements(By.CSS_SELECTOR, ".answer[aria-busy]"), 600,
             "the VM's answer")
    answer = page.find_elements(By.CSS_SELECTOR, ".answer")[-1]
    assert not answer.find_elements(By.CSS_SELECTOR, ".error"), answer.text
    arrivals = [t["t"] for t in js(page, "return window.__somnusTokenTimes")]
    # Tokens painted one by one as the guest decodes them, seconds apart under TCG.
    assert len(arrivals) >= 2 and arrivals[-1] - arrivals[0] > 500, arrivals
    cached = host.store.cache(booted_vm)
    assert cached is not None and cached.last_answer.strip()
    assert cached.last_answer.strip()[:20] in answer.text  # the VM's own words
    answer.find_element(By.CSS_SELECTOR, "details.report summary").click()
    assert "context tokens" in answer.find_element(By.CSS_SELECTOR, "details.report").text
    screenshot(page, "vm-chat-streamed")


def test_the_dashboard_follows_libvirt_live_and_asks_before_a_delete(
        page: WebDriver, app_server: AppServer, booted_vm: str, host: Host) -> None:
    page.get(app_server.base + "/#/dashboard")
    state = f"#vm-table tr[data-vm='{booted_vm}'] td.state"
    wait_for(page, lambda d: d.find_element(By.CSS_SELECTOR, state).text == "running", 30,
             "the VM shown running")
    domain = host.store.get_vm(booted_vm).domain_name
    hv = host.hypervisor()
    hv.pause(domain)  # behind Somnus's back: only libvirt's event tells the page
    try:
        wait_for(page, lambda d: d.find_element(By.CSS_SELECTOR, state).text == "paused", 30,
                 "the page to show the pause without a reload")
        log = page.find_element(By.ID, "event-log").text
        assert "suspended" in log, log
    finally:
        hv.resume(domain)
    wait_for(page, lambda d: d.find_element(By.CSS_SELECTOR, state).text == "running", 30,
             "the page to show the resume")
    page.find_element(By.CSS_SELECTOR,
                      f"#vm-table tr[data-vm='{booted_vm}'] button.delete").click()
    dialog = visible(page, "dialog.confirm")
    assert booted_vm in dialog.text
    screenshot(page, "vm-dashboard-confirm-delete")
    dialog.find_element(By.CSS_SELECTOR, "button.cancel").click()
    wait_for(page, lambda d: not d.find_elements(By.CSS_SELECTOR, "dialog.confirm"), 10,
             "the dialog to close")
    assert host.store.find_vm(booted_vm) is not None
    assert hv.is_running(domain)
    screenshot(page, "vm-dashboard")
