"""Small helpers shared by the browser tests: waits, console checks, jobs, screenshots."""

from __future__ import annotations

import json
from pathlib import Path

import requests
from selenium.common.exceptions import (
    JavascriptException,
    NoSuchElementException,
    StaleElementReferenceException,
)
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

# Generous: two cores are shared by many test processes, a browser among them.
WAIT = 30.0
# The browser's own favicon request is not the page's doing; every other
# console error is a failure.
IGNORED_CONSOLE = ("favicon.ico",)


def wait_for(driver, condition, timeout: float = WAIT, what: str = "condition"):
    """Poll ``condition(driver)`` until truthy; stale/missing elements count as not yet."""
    return WebDriverWait(
        driver,
        timeout,
        poll_frequency=0.1,
        ignored_exceptions=(
            NoSuchElementException,
            StaleElementReferenceException,
            JavascriptException,
        ),
    ).until(condition, message=f"timed out after {timeout:g}s waiting for {what}")


def css(driver, selector: str):
    return driver.find_element(By.CSS_SELECTOR, selector)


def css_all(driver, selector: str):
    return driver.find_elements(By.CSS_SELECTOR, selector)


def click(driver, selector: str) -> None:
    """Click the element, found again if a live update swapped it meanwhile."""

    def found_and_clicked(d) -> bool:
        css(d, selector).click()
        return True

    wait_for(driver, found_and_clicked, what=f"a click on {selector}")


def text_of(driver, selector: str) -> str:
    """The element's text, '' while it is absent (read in one script: no stale element)."""
    return driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? e.innerText : '';", selector
    )


def console_errors(driver, allowed: tuple[str, ...] = ()) -> list[str]:
    """Errors the page logged since the last call (drained), minus the allowed ones."""
    entries = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
    messages = [e.get("message", "") for e in entries]
    # The UI's own collector of uncaught errors, where the page provides one.
    collected = driver.execute_script("return (window.__orchErrors || []).map(String)") or []
    driver.execute_script("if (window.__orchErrors) { window.__orchErrors.length = 0; }")
    skip = IGNORED_CONSOLE + allowed
    return [m for m in [*messages, *collected] if not any(s in m for s in skip)]


def assert_clean_console(driver, page: str, allowed: tuple[str, ...] = ()) -> None:
    errors = console_errors(driver, allowed)
    assert not errors, f"browser console errors on the {page} page: {errors}"


def mark_page(driver) -> None:
    """Tag the current document; a reload or navigation loses the tag."""
    driver.execute_script("window.__orchTestMark = 'kept';")


def page_kept(driver) -> bool:
    return driver.execute_script("return window.__orchTestMark === 'kept';")


def set_textarea(driver, selector: str, text: str) -> None:
    """Paste ``text`` into a textarea as a user would (value set, input event fired)."""
    element = css(driver, selector)
    driver.execute_script(
        "arguments[0].value = arguments[1];"
        "arguments[0].dispatchEvent(new Event('input', {bubbles: true}));"
        "arguments[0].dispatchEvent(new Event('change', {bubbles: true}));",
        element,
        text,
    )


def submit_job(dev, spec: dict) -> dict:
    """POST /jobs through the JSON API (for jobs the test does not submit in the UI)."""
    resp = requests.post(dev.url + "/jobs", json=spec, headers=dev.headers(), timeout=10)
    assert resp.status_code in (200, 201), resp.text
    return resp.json()


def get_json(dev, path: str) -> dict:
    resp = requests.get(dev.url + path, headers=dev.headers(), timeout=10)
    resp.raise_for_status()
    return resp.json()


def screenshot(driver, shots: Path, name: str) -> Path:
    """A full-window PNG of the current page as ``<shots>/<name>.png``."""
    path = shots / f"{name}.png"
    assert driver.save_screenshot(str(path)), f"screenshot {path} not written"
    return path


def looping_job(job_id: str, line: str, count: int = 1, memory: int = 16) -> dict:
    """A service job whose task prints ``line`` twice a second, forever."""
    script = f"while true; do echo {json.dumps(line)}; sleep 0.5; done"
    return {
        "job_id": job_id,
        "type": "service",
        "task_groups": [
            {
                "name": "web",
                "count": count,
                "tasks": [
                    {
                        "name": "printer",
                        "config": {"command": ["sh", "-c", script]},
                        "resources": {"cpu": 20, "memory": memory},
                    }
                ],
            }
        ],
    }
