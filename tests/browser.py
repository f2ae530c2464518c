"""A real headless browser for the app's tests: Debian's chromium driven through
chromium-driver (Selenium), recording every request the page makes and saving
screenshots of each view.

Screenshots go to ``SOMNUS_SCREENSHOTS`` (default ``.test-output/screenshots`` in the
repository), one PNG per view and size, so a run leaves a picture of every page.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SCREENSHOTS = Path(os.environ.get("SOMNUS_SCREENSHOTS",
                                  Path(__file__).resolve().parents[1] / ".test-output"
                                  / "screenshots"))
T = TypeVar("T")


@contextmanager
def chromium(width: int = 1280, height: int = 800) -> Iterator[webdriver.Chrome]:
    """A headless chromium that keeps its console and network logs."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 f"--window-size={width},{height}", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-default-apps", "--metrics-recording-only"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver: webdriver.Chrome, condition: Callable[[webdriver.Chrome], T],
             timeout_s: float = 30, what: str = "") -> T:
    """``condition``'s first truthy value; fails naming ``what`` after ``timeout_s``."""
    try:
        # A live page re-renders under the test: an element found a moment ago may be gone.
        return WebDriverWait(driver, timeout_s, poll_frequency=0.1,
                             ignored_exceptions=[StaleElementReferenceException]
                             ).until(condition)
    except TimeoutException:
        raise AssertionError(f"not within {timeout_s} s: {what}") from None


def visible(driver: webdriver.Chrome, css: str, timeout_s: float = 30) -> WebElement:
    """The first displayed element matching ``css``."""
    def find(d: webdriver.Chrome) -> WebElement | None:
        for element in d.find_elements(By.CSS_SELECTOR, css):
            if element.is_displayed():
                return element
        return None
    found = wait_for(driver, find, timeout_s, f"a visible {css}")
    assert found is not None  # wait_for returns only a truthy value
    return found


def log_in(driver: webdriver.Chrome, base: str, token: str) -> None:
    """Log in through the page's own form, as a person would."""
    driver.get(base + "/")
    visible(driver, "#login-token").send_keys(token)
    driver.find_element(By.CSS_SELECTOR, "#login button[type=submit]").click()
    wait_for(driver, lambda d: not d.find_element(By.ID, "login").is_displayed(), 20,
             "the login form to go away")


def refused_login(driver: webdriver.Chrome, base: str) -> str:
    """Try a wrong token in the login form; the error the page shows."""
    driver.get(base + "/")
    visible(driver, "#login-token").send_keys("not-the-token\n")
    error: str = wait_for(driver, lambda d: d.find_element(By.ID, "login-error").text, 10,
                          "the wrong token to be refused")
    return error


def requested_urls(driver: webdriver.Chrome) -> list[str]:
    """Every URL the browser asked for since the last call (the performance log is read
    once: each call returns only what is new)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def off_loopback(urls: list[str]) -> list[str]:
    """The URLs that would leave the machine."""
    local = {"127.0.0.1", "localhost", "::1"}
    return [u for u in urls if urlsplit(u).scheme in ("http", "https", "ws", "wss")
            and urlsplit(u).hostname not in local]


# Answers chromium logs as failed requests that the page expects and handles: a 4xx
# (a refused login, no session yet) and a 503 that says when to retry (a busy agent).
EXPECTED_FAILURES = ("status of 4", "status of 503")


def console_errors(driver: webdriver.Chrome) -> list[str]:
    """Console errors since the last call, except the answers the page handles."""
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"
            and not any(expected in e["message"] for expected in EXPECTED_FAILURES)]


def screenshot(driver: webdriver.Chrome, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


def js(driver: webdriver.Chrome, script: str, *args: Any) -> Any:
    return driver.execute_script(script, *args)


def settle(seconds: float = 0.2) -> None:
    """A pause for a paint the test cannot observe otherwise (used sparingly)."""
    time.sleep(seconds)
