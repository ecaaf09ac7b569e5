"""Fixtures that drive the web UI in headless Chromium against a real `orch dev`.

The browser is Debian's chromium through /usr/bin/chromedriver (.ci/install-browser.sh);
selenium is handed that driver path so that selenium-manager never downloads
anything. Without chromium, chromedriver or selenium the tests skip and say which
is missing; in CI, where .ci/run installs them, they fail instead. Teardown kills
the driver, the browser and `orch dev` by their pids.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from harness import Proc, ensure_pyz, free_port  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_NAMES = ("chromium", "chromium-browser")
DEV_START_TIMEOUT = 40.0
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,900",
)


def _chromium() -> str | None:
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def missing_browser_parts() -> list[str]:
    """What tests/browser need and this machine lacks (empty when all is there)."""
    missing = []
    if _chromium() is None:
        missing.append("chromium (apt-get install chromium; see .ci/install-browser.sh)")
    if not CHROMEDRIVER.exists():
        missing.append(f"{CHROMEDRIVER} (apt-get install chromium-driver)")
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package (pip install -r requirements-dev.txt)")
    if not (ROOT / "orch" / "server" / "ui" / "routes.py").exists():
        missing.append("the web UI in this tree (orch/server/ui/routes.py)")
    return missing


def pytest_collection_modifyitems(items) -> None:
    """Every test here is `browser`."""
    here = Path(__file__).resolve().parent
    for item in items:
        if here in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.browser)


@pytest.fixture(autouse=True)
def _browser_parts() -> None:
    """Skip, naming what is missing; in CI (CI=true), where .ci/run installs it all, fail."""
    missing = missing_browser_parts()
    if missing:
        reason = "needs " + "; ".join(missing)
        if os.environ.get("CI") == "true":
            pytest.fail(reason + " (CI=true: .ci/run installs the browser, nothing may be missing)")
        pytest.skip(reason)


@dataclass
class DevUI:
    """A running `orch dev` and the base URL of its web UI."""

    proc: Proc
    url: str
    token: str | None

    @property
    def ui(self) -> str:
        return self.url + "/ui"

    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}


def start_dev(
    tmp_path: Path, token: str | None = None, agents: int = 2, env: dict | None = None
) -> DevUI:
    """`orch dev` from the zipapp with fast heartbeats, once all its nodes are healthy."""
    port = free_port()
    args = ["dev", "--agents", str(agents), "--port", str(port), "--heartbeat-interval", "0.5"]
    proc = Proc(
        args,
        tmp_path / "dev.stdout",
        {**({"ORCH_TOKEN": token} if token else {}), **(env or {})},
        stderr_path=tmp_path / "dev.stderr",
        cwd=tmp_path,
        pyz=ensure_pyz(),
        name="dev",
    )
    try:
        proc.wait_for_output(rf"orch dev: {agents} nodes healthy in", DEV_START_TIMEOUT, "stdout")
    except BaseException:
        proc.stop()
        raise
    return DevUI(proc, f"http://127.0.0.1:{port}", token)


@pytest.fixture
def dev_ui(tmp_path) -> Iterator[DevUI]:
    """`orch dev --agents 2` without a token."""
    dev = start_dev(tmp_path)
    yield dev
    dev.proc.stop()


@pytest.fixture
def dev_ui_token(tmp_path) -> Iterator[DevUI]:
    """`orch dev --agents 1` that requires a bearer token on its API."""
    dev = start_dev(tmp_path, token="ui-test-token-7f3a", agents=1)
    yield dev
    dev.proc.stop()


@pytest.fixture
def dev_ui_prefix(tmp_path) -> Iterator[DevUI]:
    """`orch dev --agents 1` whose server serves the UI under /orch (ORCH_UI_PREFIX)."""
    dev = start_dev(tmp_path, agents=1, env={"ORCH_UI_PREFIX": "/orch"})
    yield dev
    dev.proc.stop()


def _driver(profile: str):
    """A headless Chromium through the system chromedriver; nothing is downloaded."""
    # Belt and braces: with an explicit driver path selenium-manager is not
    # consulted, and SE_OFFLINE stops it from fetching should it ever be.
    os.environ.setdefault("SE_OFFLINE", "true")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = _chromium() or CHROMIUM_NAMES[0]
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    # The console's messages, read back by console_errors().
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


def _kill_tree(pid: int | None) -> None:
    """SIGKILL the driver and the browser processes it started, by pid."""
    if pid is None:
        return
    try:
        root = psutil.Process(pid)
        procs = [*root.children(recursive=True), root]
    except psutil.NoSuchProcess:
        return
    for proc in procs:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=10)


@pytest.fixture
def browser():
    """A fresh headless Chromium (own profile dir); driver and browser killed at teardown."""
    profile = tempfile.mkdtemp(prefix="orch-ui-chromium-")
    driver = _driver(profile)
    driver.set_page_load_timeout(30)
    driver_pid = driver.service.process.pid
    try:
        yield driver
    finally:
        try:
            driver.quit()
        except Exception:  # noqa: BLE001 - the kill below is what must happen
            pass
        _kill_tree(driver_pid)
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def shots(tmp_path) -> Path:
    """Where screenshots go: docs/ui with ORCH_UI_SCREENSHOTS=1, else the test's tmp dir."""
    if os.environ.get("ORCH_UI_SCREENSHOTS") == "1":
        target = ROOT / "docs" / "ui"
    else:
        target = tmp_path / "screenshots"
    target.mkdir(parents=True, exist_ok=True)
    return target
