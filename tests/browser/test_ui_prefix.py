"""The UI under a path prefix (what Nomad's cannot do, hashicorp/nomad#6413), in Chromium."""

from __future__ import annotations

import pytest
from uihelp import assert_clean_console, click, css_all, looping_job, submit_job, wait_for


def _links(driver) -> list[str]:
    """Every link and asset path of the page (as written, before resolving)."""
    return driver.execute_script(
        "return [...document.querySelectorAll('a[href], link[href], script[src]')]"
        ".map(e => e.getAttribute('href') || e.getAttribute('src'))"
    )


@pytest.mark.timeout(240)
def test_ui_under_a_prefix_keeps_it_in_every_link(browser, dev_ui_prefix):
    dev = dev_ui_prefix
    submit_job(dev, looping_job("prefixed-job", "p"))
    browser.get(dev.url + "/orch/ui/jobs")
    wait_for(
        browser,
        lambda d: css_all(d, "table#jobs-table tr[data-job-id='prefixed-job']"),
        what="the job's row under /orch/ui",
    )
    local = [h for h in _links(browser) if h.startswith("/")]
    assert local and all(h.startswith("/orch/") for h in local), local
    click(browser, "#nav-nodes")
    wait_for(browser, lambda d: d.current_url.endswith("/orch/ui/nodes"), what="/orch/ui/nodes")
    wait_for(browser, lambda d: css_all(d, "tr[data-node-id]"), what="the node's row")
    assert_clean_console(browser, "nodes (prefix)")
