"""A person's first session in the web UI, in headless Chromium against `orch dev`.

Submit a job on the Run page, watch its allocation turn running on the job page
without a reload, read a line the task prints in the allocation's live log (HTML
in it shown as text), and stop the job from its button.
"""

from __future__ import annotations

import json

import pytest
from selenium.webdriver.support import expected_conditions as ec
from uihelp import (
    assert_clean_console,
    click,
    css,
    css_all,
    get_json,
    looping_job,
    mark_page,
    page_kept,
    screenshot,
    set_textarea,
    text_of,
    wait_for,
)

JOB_ID = "ui-flow"
LINE = "orch-ui-line <b>html</b>"


def plan_and_submit(browser, dev, shots) -> None:
    """Paste the job on the Run page, see its plan, submit, land on the job page."""
    browser.get(dev.ui + "/run")
    wait_for(browser, lambda d: css(d, "textarea#job-spec"), what="the job spec box")
    assert css_all(browser, "input#job-file[type=file]"), "no file upload on the Run page"
    set_textarea(browser, "textarea#job-spec", json.dumps(looping_job(JOB_ID, LINE), indent=2))
    click(browser, "button#btn-plan")
    wait_for(
        browser,
        lambda d: text_of(d, "#plan-output").strip() and not css_all(d, "#plan-output .loading"),
        what="the plan in #plan-output",
    )
    plan = text_of(browser, "#plan-output")
    assert "web" in plan or "place" in plan.lower(), f"plan names no placement: {plan!r}"
    screenshot(browser, shots, "run")
    assert_clean_console(browser, "run")
    click(browser, "button#btn-submit")
    wait_for(
        browser,
        lambda d: d.current_url.rstrip("/").endswith(f"/ui/jobs/{JOB_ID}"),
        what="the job page after submit",
    )


def watch_running(browser, shots) -> None:
    """The allocation turns running on the open job page, with no reload."""
    wait_for(browser, lambda d: css(d, "#job-status"), what="#job-status")
    mark_page(browser)
    wait_for(
        browser,
        lambda d: "running" in text_of(d, "table#allocs-table tr[data-alloc-id] td.alloc-status"),
        what="the allocation running in #allocs-table",
    )
    wait_for(browser, lambda d: "running" in text_of(d, "#job-status"), what="job running")
    assert page_kept(browser), "the job page reloaded to show the change"
    assert css_all(browser, "#versions .version[data-version]"), "no version listed"
    assert css_all(browser, "#deployment"), "no #deployment section"
    screenshot(browser, shots, "job")
    assert_clean_console(browser, "job")


def read_live_log(browser, shots) -> None:
    """Open the allocation; the task's line appears in the live log, HTML as text."""
    click(browser, "table#allocs-table tr[data-alloc-id] td.alloc-status a")
    wait_for(browser, lambda d: "/ui/allocations/" in d.current_url, what="the allocation page")
    wait_for(browser, lambda d: css_all(d, "#tasks ol.events li"), what="task events in #tasks")
    assert css_all(browser, "select#log-task") and css_all(browser, "select#log-type")
    assert css(browser, "input#log-follow").get_attribute("type") == "checkbox"
    wait_for(browser, lambda d: LINE in text_of(d, "pre#log"), what=f"{LINE!r} in pre#log")
    # Later lines arrive on the open page: the log is streamed, not loaded once.
    count = text_of(browser, "pre#log").count(LINE)
    wait_for(
        browser,
        lambda d: text_of(d, "pre#log").count(LINE) > count,
        what="more lines streamed into pre#log",
    )
    assert not css_all(browser, "pre#log b"), "task output was rendered as HTML"
    screenshot(browser, shots, "allocation")
    assert_clean_console(browser, "allocation")


def stop_from_button(browser, dev) -> None:
    """The job page's stop button asks first, then the job stops."""
    browser.get(f"{dev.ui}/jobs/{JOB_ID}")
    wait_for(browser, lambda d: css(d, "#btn-stop").is_displayed(), what="#btn-stop")
    for selector in ("#btn-restart", "#btn-delete"):
        assert css_all(browser, selector), f"no {selector} on the job page"
    # Restart runs a stopped job again: off while it runs (it was on, and
    # its click could only fail with "only a stopped job can be restarted").
    wait_for(browser, lambda d: not css(d, "#btn-restart").is_enabled(), what="#btn-restart off")
    confirm_then(browser, dev, "#btn-stop", ("dead",), what="the job dead in GET /jobs/<id>")
    wait_for(browser, lambda d: "dead" in text_of(d, "#job-status"), what="#job-status dead")
    assert_clean_console(browser, "job (after stop)")


def confirm_then(browser, dev, button: str, statuses: tuple, what: str) -> None:
    """Click a job button, accept its confirmation, wait for the job's status."""
    click(browser, button)
    wait_for(browser, ec.alert_is_present(), what=f"the {button} confirmation")
    browser.switch_to.alert.accept()
    wait_for(
        browser,
        lambda d: get_json(dev, f"/jobs/{JOB_ID}").get("status") in statuses,
        what=what,
    )


def restart_from_button(browser, dev) -> None:
    """The stopped job's restart button asks first, then the job runs again."""
    wait_for(browser, lambda d: css(d, "#btn-restart").is_enabled(), what="#btn-restart enabled")
    # Asked through wait_for: a live update may swap the element meanwhile.
    wait_for(browser, lambda d: not css(d, "#btn-stop").is_enabled(), what="#btn-stop off")
    confirm_then(browser, dev, "#btn-restart", ("pending", "running"), what="the job running again")
    wait_for(browser, lambda d: not css(d, "#btn-restart").is_enabled(), what="#btn-restart off")
    assert not css_all(browser, ".notice.error"), text_of(browser, ".notice.error")
    assert_clean_console(browser, "job (after restart)")


@pytest.mark.timeout(300)
def test_run_page_to_live_log_to_stop(browser, dev_ui, shots):
    plan_and_submit(browser, dev_ui, shots)
    watch_running(browser, shots)
    read_live_log(browser, shots)
    stop_from_button(browser, dev_ui)
    restart_from_button(browser, dev_ui)
