"""The web UI's list pages, a pending job's reason and the token form, in headless Chromium."""

from __future__ import annotations

import re

import pytest
import requests
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.keys import Keys
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
    submit_job,
    text_of,
    wait_for,
)

ROW = "table#jobs-table tr[data-job-id='{}']"


def _row_visible(driver, job_id: str) -> bool:
    rows = css_all(driver, ROW.format(job_id))
    return bool(rows) and rows[0].is_displayed()


def row_snapshot(driver, job_id: str, ready=lambda row: True, what: str = "") -> dict:
    """One job row's cells, read in one script: live updates swap rows at any time.

    Polled until ``ready(cells)``: a row can first be drawn before the job's
    allocations exist (no count bars yet), and is redrawn on the next change.
    """
    script = """
        const row = document.querySelector(arguments[0]);
        const time = row.querySelector('time[title]');
        return {type: row.querySelector('td.job-type').textContent.trim(),
                bars: row.querySelectorAll('.bar').length,
                time: time ? time.getAttribute('title') : ''};
    """

    def cells(d):
        row = d.execute_script(script, ROW.format(job_id))
        return row if row and ready(row) else None

    return wait_for(driver, cells, what=f"{job_id}'s row {what}".strip())


def _row_visible_now(driver, job_id: str) -> bool:
    """Like _row_visible, read in one script (a live update may swap the row meanwhile)."""
    return driver.execute_script(
        "const r = document.querySelector(arguments[0]); return !!r && !r.hidden"
        " && r.getClientRects().length > 0;",
        ROW.format(job_id),
    )


@pytest.mark.timeout(240)
def test_jobs_page_lists_updates_and_searches(browser, dev_ui, shots):
    submit_job(dev_ui, looping_job("alpha-web", "alpha"))
    submit_job(dev_ui, looping_job("beta-web", "beta", count=2))
    browser.get(dev_ui.ui + "/")
    wait_for(browser, lambda d: d.current_url.rstrip("/").endswith("/ui/jobs"), what="/ → /jobs")
    wait_for(browser, lambda d: _row_visible(d, "beta-web"), what="beta-web's row")
    for nav in ("#nav-jobs", "#nav-nodes", "#nav-topology", "#nav-run"):
        assert css_all(browser, nav), f"no {nav} link"
    # Without --token there is nothing to ask, and the stream is not lost.
    assert not css(browser, "#token-form").is_displayed()
    # The banner is hidden in the shell and shown only once a stream attempt has
    # failed: a slow first connection on a loaded host must not show it.
    assert not css(browser, "#conn-banner").is_displayed()
    row = row_snapshot(browser, "alpha-web", lambda r: r["bars"] > 0, "with count bars")
    assert row["type"] == "service"
    assert row["bars"] > 0, "no count bars in the row"
    stamp = row["time"]
    assert stamp[:2] == "20" and "T" in stamp, f"time title is not an exact ISO time: {stamp!r}"
    wait_for(
        browser,
        lambda d: "running" in text_of(d, ROW.format("beta-web") + " td.job-status"),
        what="beta-web running",
    )

    # A job submitted elsewhere appears on the open page without a reload.
    mark_page(browser)
    submit_job(dev_ui, looping_job("gamma-web", "gamma"))
    wait_for(browser, lambda d: _row_visible(d, "gamma-web"), what="gamma-web's row appearing")
    assert page_kept(browser), "the jobs page reloaded to show a new job"
    screenshot(browser, shots, "jobs")

    # `/` focuses the search box (and is not typed into it); a search filters rows.
    # Keys go to whatever has focus (ActionChains, no element handle): a live
    # update swaps #main's content, search box included, and gives focus back
    # to the new box, so a held handle would go stale mid-typing.
    css(browser, "body").send_keys("/")
    assert browser.execute_script("return document.activeElement.id") == "search"
    assert browser.execute_script("return document.querySelector('input#search').value") == ""
    assert css_all(browser, "select#status-filter"), "no status filter"
    ActionChains(browser).send_keys("alpha").perform()
    wait_for(browser, lambda d: not _row_visible(d, "beta-web"), what="beta-web filtered out")
    assert browser.execute_script("return document.querySelector('input#search').value") == "alpha"
    assert _row_visible_now(browser, "alpha-web")
    assert_clean_console(browser, "jobs")

    click(browser, ROW.format("alpha-web") + " a")
    wait_for(
        browser, lambda d: d.current_url.rstrip("/").endswith("/ui/jobs/alpha-web"), what="link"
    )
    assert_clean_console(browser, "job")


@pytest.mark.timeout(240)
def test_nodes_and_topology_pages(browser, dev_ui, shots):
    # Big enough to be seen in the topology's boxes, small enough for any CI host.
    submit_job(dev_ui, looping_job("topo-web", "topo", count=3, memory=1024))
    submit_job(dev_ui, looping_job("topo-db", "db", count=2, memory=2048))
    node_ids = {n["node_id"] for n in get_json(dev_ui, "/nodes")["nodes"]}
    assert len(node_ids) == 2

    browser.get(dev_ui.ui + "/nodes")
    wait_for(
        browser,
        lambda d: (
            {r.get_attribute("data-node-id") for r in css_all(d, "tr[data-node-id]")} == node_ids
        ),
        what="both nodes in #nodes-table",
    )
    # The contract names no class for these bars: U1's pages draw them as .meter.
    meters = browser.execute_script(
        "return [...document.querySelectorAll('#nodes-table tr[data-node-id]')]"
        ".map(r => r.querySelectorAll('.bar, .meter').length)"
    )
    assert meters and min(meters) >= 2, f"no CPU and memory bars in a node's row: {meters}"

    def allocated_mb(d) -> int:
        return sum(int(n) for n in re.findall(r"(\d+) / \d+ MB", text_of(d, "#nodes-table")))

    # Allocated memory shows in the rows: 7168 MB in all, split over the two nodes.
    wait_for(browser, lambda d: allocated_mb(d) == 3 * 1024 + 2 * 2048, what="allocated MB")
    screenshot(browser, shots, "nodes")
    assert_clean_console(browser, "nodes")

    browser.get(dev_ui.ui + "/topology")
    wait_for(
        browser,
        lambda d: len(css_all(d, "#topology .alloc-block[data-alloc-id]")) == 5,
        what="five allocation blocks in #topology",
    )
    boxes = {b.get_attribute("data-node-id") for b in css_all(browser, "#topology .node-box")}
    assert boxes == node_ids
    titles = [b.get_attribute("title") for b in css_all(browser, "#topology .alloc-block")]
    web = [t for t in titles if t.startswith("topo-web/web[")]
    db = [t for t in titles if t.startswith("topo-db/web[")]
    assert len(web) == 3 and all("1024" in t for t in web), titles
    assert len(db) == 2 and all("2048" in t for t in db), titles
    screenshot(browser, shots, "topology")
    assert_clean_console(browser, "topology")


@pytest.mark.timeout(240)
def test_pending_job_says_why_on_its_page(browser, dev_ui, shots):
    # No node has a terabyte of memory: the scheduler blocks the evaluation.
    submit_job(dev_ui, looping_job("too-big", "never", memory=1_000_000))
    browser.get(dev_ui.ui + "/jobs/too-big")
    reason = wait_for(
        browser, lambda d: text_of(d, "#pending-reason").strip(), what="#pending-reason"
    )
    assert "memory" in reason.lower(), f"reason names no resource: {reason!r}"
    assert "2" in reason, f"reason does not say on how many nodes: {reason!r}"
    assert "pending" in text_of(browser, "#job-status")
    assert "memory" in text_of(browser, "#evals").lower(), "evaluations show no failure"
    screenshot(browser, shots, "job-pending")
    assert_clean_console(browser, "job (pending)")


@pytest.mark.timeout(240)
def test_token_form_then_pages_work(browser, dev_ui_token):
    dev = dev_ui_token
    submit_job(dev, looping_job("secret-job", "s"))
    # The page shell is public and carries no cluster data.
    shell = requests.get(dev.ui + "/jobs", timeout=10)
    assert shell.status_code == 200 and "secret-job" not in shell.text

    browser.get(dev.ui + "/jobs")
    wait_for(browser, lambda d: css(d, "#token-form").is_displayed(), what="#token-form")
    assert text_of(browser, "#token-form label") == "This server needs its API token"
    # A wrong token is asked for again, saying it was refused.
    css(browser, "input#token-input").send_keys("not-" + dev.token)
    click(browser, "#token-submit")
    wait_for(
        browser,
        lambda d: (
            "was refused" in text_of(d, "#token-form label")
            and css(d, "#token-form").is_displayed()
        ),
        what="the form again, saying the token was refused",
    )
    css(browser, "input#token-input").send_keys(dev.token)
    click(browser, "#token-submit")
    wait_for(browser, lambda d: _row_visible(d, "secret-job"), what="jobs after the token")
    stored = browser.execute_script("return sessionStorage.getItem('orch-token')")
    assert stored == dev.token
    assert dev.token not in browser.current_url
    # The 401s before the token was given are expected; nothing else is.
    assert_clean_console(browser, "jobs (token)", allowed=("401",))

    browser.get(dev.ui + "/nodes")
    wait_for(browser, lambda d: css_all(d, "tr[data-node-id]"), what="nodes with the kept token")
    assert not css(browser, "#token-form").is_displayed()
    assert dev.token not in browser.current_url
    assert_clean_console(browser, "nodes (token)")


def test_search_key_does_not_steal_typing(browser, dev_ui):
    browser.get(dev_ui.ui + "/run")
    box = wait_for(browser, lambda d: css(d, "textarea#job-spec"), what="the job spec box")
    box.click()
    box.send_keys("a/b")
    assert css(browser, "textarea#job-spec").get_attribute("value") == "a/b"
    box.send_keys(Keys.ESCAPE)
    assert_clean_console(browser, "run")
