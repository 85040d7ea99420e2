"""The controller's status page in a real headless browser (Debian's chromium and
chromium-driver, driven by Selenium): it loads, shows the engines, updates when
engines join or die and when tasks run, and the token is required."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import time
import urllib.error
import urllib.request

import pytest

from plait.parallel import RemoteError
from plait.parallel.error import TaskAborted
from tests.support.cluster import Gate, Signal, read_fifo, run_cmd, wait_exit

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
if not (CHROMIUM and DRIVER):
    pytest.skip("chromium and chromium-driver are not installed (apt-get install chromium "
                "chromium-driver; .ci/run does)", allow_module_level=True)

from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


def _url(c) -> str:
    return (c.security / "ipcontroller-status.url").read_text().strip()


@pytest.fixture
def browser():
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1000,800"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _shows(driver, element_id: str, want, timeout: float, since: float | None = None
           ) -> float | None:
    """Once the page's ``element_id`` reads ``want`` (a str, or a test of it): with
    ``since`` (a time.time() of the change), how long after it the page showed it
    (see :func:`_age`), else None."""
    test = want if callable(want) else (lambda text: text == want)
    WebDriverWait(driver, timeout, poll_frequency=0.05).until(
        lambda d: test(d.find_element(By.ID, element_id).text))
    return None if since is None else _age(driver.find_element(By.ID, element_id), since)


def _age(element, since: float) -> float:
    """Seconds from ``since`` to the snapshot that gave ``element`` what it shows
    (the page marks what each snapshot changes with that snapshot's time): how
    long the page took to show a change, whatever the time a loaded browser
    or Selenium then takes to look."""
    return float(element.get_attribute("data-since")) - since


#: Seconds within which the page shows a change (the issue's "within a second").
AT_ONCE = 1.0
#: Seconds a test waits for the page to show it (the browser may be slow to look).
SEEN = 10


def _pixels(driver, canvas: str, colour: str | None = None) -> int:
    """How many pixels of the page's ``canvas`` are drawn (of ``colour``, '#rrggbb')."""
    return driver.execute_script(
        "const c = document.getElementById(arguments[0]), want = arguments[1];"
        "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        "let n = 0; for (let i = 0; i < d.length; i += 4) { if (!d[i + 3]) continue;"
        "  const hex = '#' + [d[i], d[i + 1], d[i + 2]].map("
        "    v => v.toString(16).padStart(2, '0')).join('');"
        "  if (!want || hex === want) n++; } return n", canvas, colour)


def _started_then_gated(started: str, gate: Gate):
    """A task (sent by value) that says it started through the FIFO ``started``,
    then waits at ``gate``."""
    waiter = gate.waiter()

    def started_then_gated(*args):
        with open(started, "w") as f:
            f.write("started")
        return waiter()

    return started_then_gated


def test_the_status_page_follows_the_cluster(cluster_factory, browser, tmp_path):
    c = cluster_factory(2)
    url = _url(c)
    rc = c.rc()
    assert rc.dashboard_url == url
    browser.get(url)
    _shows(browser, "engine-count", "2", 30)
    assert len(browser.find_elements(By.CSS_SELECTOR, "tr.engine")) == 2
    # tasks run: the count of tasks done follows at once, and the rate is drawn
    rc.load_balanced_view().map_sync(abs, range(200), chunksize=1)
    done = _shows(browser, "tasks-done", lambda text: text.isdigit() and int(text) >= 200,
                  SEEN, since=time.time())
    assert done < AT_ONCE, done
    WebDriverWait(browser, 3, poll_frequency=0.05).until(  # the tasks/s bars (per second)
        lambda d: _pixels(d, "history", "#3b7dd8") > 0)
    assert float(browser.find_element(By.ID, "rate").text) > 0  # tasks/s, the last 10 s
    done_by_engine = [int(tr.find_elements(By.TAG_NAME, "td")[4].text)
                      for tr in browser.find_elements(By.CSS_SELECTOR, "tr.engine")]
    assert sum(done_by_engine) == int(browser.find_element(By.ID, "tasks-done").text) >= 200
    # an engine dies, another joins: the page says so at once
    pid = rc[1].apply_sync(os.getpid)
    os.kill(pid, signal.SIGKILL)
    assert wait_exit(pid, 10)
    died = _shows(browser, "engine-count", "1", SEEN, since=time.time())
    run_cmd(["ipcluster", "engines", "-n", "1", "--timeout", "60"], c.env)
    joined = _shows(browser, "engine-count", "2", SEEN, since=time.time())
    assert died < AT_ONCE and joined < AT_ONCE, (died, joined)
    # each engine's host, pid and memory, reported by the engine itself
    pids = rc[:].apply_sync(os.getpid)

    def engine_rows(driver) -> list[list[str]] | None:
        rows = [[td.text for td in tr.find_elements(By.TAG_NAME, "td")]
                for tr in driver.find_elements(By.CSS_SELECTOR, "tr.engine")]
        return rows if rows and all(r[7] and r[9] for r in rows) else None

    def until(test, timeout: float):  # (rows are redrawn with each snapshot)
        return WebDriverWait(browser, timeout, poll_frequency=0.05,
                             ignored_exceptions=[StaleElementReferenceException]).until(test)

    rows = until(engine_rows, 20)  # (CPU: from an engine's second report, 2 s apart)
    assert sorted(int(r[7]) for r in rows) == sorted(pids)
    assert all(r[6] == socket.gethostname() and r[8].endswith(" MB") for r in rows)
    assert all(r[9].endswith(" %") for r in rows)
    # a task starts: at once it shows on its engine's row (busy, running 1, its msg_id);
    # tasks behind it show as queued, on an engine or waiting for one
    gates = [Gate(tmp_path, f"gate{i}") for i in range(5)]  # (one each: a FIFO read by
    started = str(tmp_path / "started")  # two at once would let both go)
    os.mkfifo(started)
    view = rc.load_balanced_view()
    held = view.apply_async(_started_then_gated(started, gates[0]))
    assert read_fifo(started) == "started"
    t0 = time.time()

    def busy_row(driver) -> list[str] | None:
        return next((r for r in engine_rows(driver) or []
                     if r[1:3] == ["busy", "1"] and r[5] == "…" + held.msg_ids[0][-12:]),
                    None)

    behind: list = []
    try:
        until(busy_row, SEEN)
        [task_cell] = [td for td in browser.find_elements(By.CSS_SELECTOR, "tr.engine td")
                       if td.text == "…" + held.msg_ids[0][-12:]]
        busy = _age(task_cell, t0)
        assert busy < AT_ONCE, busy
        behind = [view.apply_async(gate.waiter()) for gate in gates[1:]]
        direct = rc[int(rows[0][0])].apply_async(abs, -5)  # (an engine's own queue)

        def queued(driver) -> tuple[list[list[str]], int] | None:
            rows = engine_rows(driver) or []
            waiting = driver.find_element(By.ID, "unassigned").text
            if len(rows) != 2 or not waiting.isdigit():
                return None
            handed = sum(int(r[2]) for r in rows) + int(waiting)
            return (rows, int(waiting)) if handed == 5 and rows[0][3] == "1" else None

        rows, waiting = until(queued, 10)
        assert all(r[1] == "busy" and int(r[2]) >= 1 for r in rows)
        snapshot = json.load(urllib.request.urlopen(url.replace("?", "status.json?"),
                                                    timeout=10))
        assert snapshot["unassigned"] == waiting
        assert [e["queue"] for e in snapshot["engines"]] == [int(r[3]) for r in rows]
    finally:
        for gate in gates[:1 + len(behind)]:
            gate.release()
    assert held.get(timeout=30) == "go" and [ar.get(timeout=30) for ar in behind] == ["go"] * 4
    assert direct.get(timeout=30) == 5
    # a failure shows at once with its traceback, and the task stream draws each
    # task in the colour of its outcome
    def fails(x: int) -> None:
        raise ValueError(f"bad input {x}")

    with pytest.raises(RemoteError, match="ValueError: bad input 7"):
        rc.load_balanced_view().apply_sync(fails, 7)
    failed = _shows(browser, "failures", lambda text: "ValueError: bad input 7" in text
                    and "in fails" in text, SEEN, since=time.time())
    assert failed < AT_ONCE, failed
    assert _pixels(browser, "stream", "#2a9d2a") > 0 and _pixels(browser, "stream", "#c62828") > 0
    # a running task aborted: a grey bar on its engine's row
    hanging = Signal(tmp_path)
    aborted = rc.load_balanced_view().apply_async(hanging.hanger())
    assert read_fifo(hanging.path).isdigit()  # (it runs)
    aborted.abort()
    with pytest.raises(TaskAborted):
        aborted.get(timeout=30)
    WebDriverWait(browser, SEEN, poll_frequency=0.05).until(
        lambda d: _pixels(d, "stream", "#999999") > 0)
    # the history: the hub's records, searched from the page
    browser.find_element(By.CSS_SELECTOR, "select[name=status] option[value=failed]").click()
    browser.find_element(By.CSS_SELECTOR, "#search button").click()
    _shows(browser, "history-note", "1 records (the newest first)", 10)
    [record] = browser.find_elements(By.CSS_SELECTOR, "tr.record")
    assert "failed" in record.text
    # nothing was fetched from elsewhere (no CDN): every request went to the controller
    origin = browser.execute_script("return location.origin")
    fetched = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)")
    assert fetched and all(name.startswith(origin + "/") for name in fetched), fetched
    shot = os.environ.get("PLAIT_STATUS_SCREENSHOT") or str(tmp_path / "status_page.png")
    browser.save_screenshot(shot)  # (the one in docs/images: PLAIT_STATUS_SCREENSHOT)
    with open(shot, "rb") as f:
        assert f.read(4) == b"\x89PNG"


def test_the_token_is_required_and_scripts_get_json_and_prometheus(cluster_factory):
    c = cluster_factory(1)
    url = _url(c)
    base, token = url.split("?token=")
    for bare in (base, base + "status.json", base + "metrics", base + "events",
                 base + "history.json", base + "?token=wrong",
                 base + "status.json?token=" + token[:-1]):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(bare, timeout=10)
        assert refused.value.code == 403, bare
    snapshot = json.load(urllib.request.urlopen(f"{base}status.json?token={token}", timeout=10))
    assert snapshot["engine_count"] == 1 and snapshot["engines"][0]["id"] == 0
    text = urllib.request.urlopen(f"{base}metrics?token={token}", timeout=10).read().decode()
    assert "plait_engines 1\n" in text and "plait_tasks_completed_total" in text
    # each engine's memory, once it reported it (it does every 2 s)
    deadline = time.monotonic() + 15
    while 'plait_engine_memory_bytes{engine="0"}' not in text:
        assert time.monotonic() < deadline, text
        time.sleep(0.1)  # (the page is a snapshot a second: it is asked again)
        text = urllib.request.urlopen(f"{base}metrics?token={token}", timeout=10).read().decode()
    # the hub's history, searched by scripts; a bad search says what is wrong
    rc = c.rc()
    ar = rc.load_balanced_view().apply_async(abs, -3)
    assert ar.get(timeout=30) == 3
    found = json.load(urllib.request.urlopen(
        f"{base}history.json?token={token}&msg_id={ar.msg_ids[0]}", timeout=10))
    assert [(r["msg_id"], r["status"], r["engine_id"]) for r in found] == [
        (ar.msg_ids[0], "succeeded", 0)]
    for bad, says in (("engine=x", "engine is an engine id"),
                      ("msg_id=nonsense", "is not a task id of this controller")):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{base}history.json?token={token}&{bad}", timeout=10)
        assert refused.value.code == 400 and says in refused.value.read().decode()
    assert base.startswith("http://127.0.0.1:")  # loopback by default
    assert oct((c.security / "ipcontroller-status.url").stat().st_mode & 0o777) == "0o600"
