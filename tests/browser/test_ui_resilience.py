"""The UI through a server restart (banner, then recovery) and at a phone's width."""

from __future__ import annotations

import pytest
from uihelp import (
    assert_clean_console,
    css,
    css_all,
    looping_job,
    mark_page,
    page_kept,
    submit_job,
    wait_for,
)

from harness import Proc, ensure_pyz, free_port, http_get, wait_until

ROW = "table#jobs-table tr[data-job-id='{}']"


class Target:
    """What uihelp's calls need of a cluster: its URL, its UI's, no token."""

    def __init__(self, url: str):
        self.url, self.ui = url, url + "/ui"

    def headers(self) -> dict:
        return {}


def start_server(tmp_path, port: int, run: int) -> Proc:
    """`orch server` from the zipapp on ``port``, its state kept in one data dir."""
    args = ["server", "--port", str(port), "--data-dir", str(tmp_path / "server-data")]
    proc = Proc(
        args,
        tmp_path / f"server-{run}.log",
        cwd=tmp_path,
        pyz=ensure_pyz(),
        name=f"server-{run}",
    )
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: http_get(url + "/health").status_code == 200, 30, what="server /health")
    return proc


@pytest.fixture
def lone_server(tmp_path):
    """A server without agents; the test may stop and start it again (same port)."""
    port = free_port()
    procs = [start_server(tmp_path, port, 1)]
    yield port, procs
    for proc in reversed(procs):
        proc.stop()


@pytest.mark.timeout(240)
def test_lost_server_shows_banner_then_page_recovers(browser, lone_server, tmp_path):
    port, procs = lone_server
    dev = Target(f"http://127.0.0.1:{port}")
    submit_job(dev, looping_job("before", "b"))
    browser.get(dev.ui + "/jobs")
    wait_for(browser, lambda d: css_all(d, ROW.format("before")), what="the job's row")
    mark_page(browser)
    assert not css(browser, "#conn-banner").is_displayed()

    procs[0].stop()
    wait_for(browser, lambda d: css(d, "#conn-banner").is_displayed(), what="#conn-banner shown")

    procs.append(start_server(tmp_path, port, 2))
    wait_for(
        browser, lambda d: not css(d, "#conn-banner").is_displayed(), what="#conn-banner hidden"
    )
    submit_job(dev, looping_job("after", "a"))
    wait_for(browser, lambda d: css_all(d, ROW.format("after")), what="a new job after recovery")
    assert page_kept(browser), "the page reloaded to recover"
    # Failed fetches while the server was down are the browser's own reports:
    # refused connections, and the live-update stream cut when it stopped.
    allowed = ("ERR_CONNECTION_REFUSED", "ERR_INCOMPLETE_CHUNKED_ENCODING")
    assert_clean_console(browser, "jobs (reconnect)", allowed=allowed)


@pytest.mark.timeout(240)
def test_phone_width_has_no_sideways_page_scroll(browser, dev_ui):
    submit_job(dev_ui, looping_job("narrow-view-job", "n"))
    browser.set_window_size(390, 844)
    overflow = "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
    for page, ready in (
        ("jobs", ROW.format("narrow-view-job")),
        ("nodes", "tr[data-node-id]"),
        ("topology", "#topology .node-box"),
        ("run", "textarea#job-spec"),
    ):
        browser.get(f"{dev_ui.ui}/{page}")
        wait_for(browser, lambda d, sel=ready: css_all(d, sel), what=f"the {page} page")
        extra = browser.execute_script(overflow)
        assert extra <= 1, f"the {page} page scrolls sideways by {extra}px at 390px wide"
        assert_clean_console(browser, page)
