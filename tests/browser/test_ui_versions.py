"""The job page's versions (diff, revert) and its buttons that ask first, in headless Chromium."""

from __future__ import annotations

import pytest
import requests
from selenium.webdriver.support import expected_conditions as ec
from uihelp import (
    assert_clean_console,
    click,
    css_all,
    get_json,
    looping_job,
    mark_page,
    page_kept,
    submit_job,
    text_of,
    wait_for,
)

JOB_ID = "ui-versions"


def _answer_confirm(browser, accept: bool) -> None:
    wait_for(browser, ec.alert_is_present(), what="a confirmation")
    if accept:
        browser.switch_to.alert.accept()
    else:
        browser.switch_to.alert.dismiss()


def _versions_shown(driver) -> list[str]:
    return driver.execute_script(
        "return [...document.querySelectorAll('#versions .version[data-version]')]"
        ".map(v => v.dataset.version)"
    )


@pytest.mark.timeout(240)
def test_versions_diff_revert_and_buttons_that_ask(browser, dev_ui):
    submit_job(dev_ui, looping_job(JOB_ID, "v"))
    # Version 1: count 1 -> 2, and an env value with HTML in it (shown as text).
    changed = looping_job(JOB_ID, "v", count=2)
    changed["task_groups"][0]["tasks"][0]["config"]["env"] = {"GREETING": "<i>hi</i>"}
    submit_job(dev_ui, changed)
    browser.get(f"{dev_ui.ui}/jobs/{JOB_ID}")
    wait_for(browser, lambda d: sorted(_versions_shown(d)) == ["0", "1"], what="versions 0 and 1")
    mark_page(browser)

    click(browser, "#versions button.show-diff[data-version='1']")
    diff = wait_for(browser, lambda d: text_of(d, "#version-diff"), what="#version-diff")
    assert "task_groups[0].count" in diff and "1 -> 2" in diff, diff
    assert "<i>hi</i>" in diff and not css_all(browser, "#version-diff i"), diff

    # Revert asks first; once confirmed, version 0's spec comes back as version 2.
    click(browser, "#versions button.revert[data-version='0']")
    _answer_confirm(browser, accept=True)
    wait_for(
        browser,
        lambda d: get_json(dev_ui, f"/jobs/{JOB_ID}")["task_groups"][0]["count"] == 1,
        what="the job back at count 1",
    )
    wait_for(browser, lambda d: "2" in _versions_shown(d), what="version 2 on the page")
    assert page_kept(browser), "the job page reloaded to show the revert"

    # Stop, dismissed, stops nothing; delete, confirmed, removes the job.
    click(browser, "#btn-stop")
    _answer_confirm(browser, accept=False)
    assert get_json(dev_ui, f"/jobs/{JOB_ID}")["status"] != "dead"
    click(browser, "#btn-delete")
    _answer_confirm(browser, accept=True)
    wait_for(
        browser,
        lambda d: requests.get(f"{dev_ui.url}/jobs/{JOB_ID}", timeout=5).status_code == 404,
        what="the job deleted",
    )
    assert_clean_console(browser, "job (versions)")


def test_write_from_another_site_is_refused(dev_ui):
    """A page elsewhere cannot make a visitor's browser stop a job (Origin check)."""
    submit_job(dev_ui, looping_job("origin-check", "o"))
    other = requests.delete(
        f"{dev_ui.url}/jobs/origin-check", headers={"Origin": "http://evil.example"}, timeout=10
    )
    assert other.status_code == 403 and "error" in other.json(), other.text
    same = requests.delete(
        f"{dev_ui.url}/jobs/origin-check", headers={"Origin": dev_ui.url}, timeout=10
    )
    assert same.status_code == 200, same.text
