"""Queues, properties, pending results, kill, benchmark, and the client's flavours
(asynchronous in Twisted code; blocking under a running asyncio loop)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest
from twisted.internet import defer

from plait.kernel import client
from support import in_reactor
from support.cluster import wait_for_engines

GATE = "import os, time\nwhile not os.path.exists({path!r}): time.sleep(0.005)"


@pytest.fixture
def held(mec, tmp_path):
    """Engines 0 and 1 busy until ``release()``; returns (pending result, release)."""
    gate = tmp_path / "gate"
    pr = mec.execute(GATE.format(path=str(gate)), targets=[0, 1], block=False)
    yield pr, gate.touch
    gate.touch()
    pr.get_result()


def test_queue_status_shows_running_and_waiting_commands(mec, held):
    pr, release = held
    mec.block = False
    waiting = [mec.execute("a = 1"), mec.execute("b = 2"), mec.push({"c": 3}, targets=0)]
    status = mec.queue_status(block=True)
    assert isinstance(status, client.QueueStatusList)
    assert [engine for engine, _ in status] == [0, 1, 2, 3]
    assert status[0][1] == {
        "pending": "execute: import os, time ...",
        "queue": ["execute: a = 1", "execute: b = 2", "push"],
    }
    assert repr(status).splitlines()[:5] == [
        "<Queue Status List>",
        "[0] pending: execute: import os, time ...",
        "[0] queued:  execute: a = 1",
        "[0]          execute: b = 2",
        "[0]          push",
    ]
    release()
    mec.barrier([pr, *waiting])
    assert repr(mec.queue_status(block=True)) == (
        "<Queue Status List>\n[0] idle\n[1] idle\n[2] idle\n[3] idle"
    )


def test_clear_queue_drops_waiting_commands(mec, held):
    pr, release = held
    mec.block = False
    sent = [mec.execute(f"v{k} = {k}", targets=0) for k in range(3)]
    assert mec.clear_queue(targets=0, block=True) == [None]
    left = mec.queue_status(targets=0, block=True)[0][1]["queue"]  # already sent ahead
    release()
    ran = []
    for k, pending in enumerate(sent):  # those sent ahead to the engine still run
        try:
            pending.get_result()
            ran.append(f"v{k}")
        except client.CompositeError as e:
            assert str(e).endswith(
                f"[0:execute]: QueueCleared: command 'execute: v{k} = {k}' was cleared "
                "from the queue"
            )
    assert "v2" not in ran
    assert left == [f"execute: {name} = {name[1:]}" for name in ran]
    assert [k for k in mec.keys(targets=0, block=True)[0] if k.startswith("v")] == ran


def test_properties(mec):
    mec.clear_properties()
    assert mec.set_properties({"ram": 8, "gpu": False}, targets=[0, 1]) == [None, None]
    mec.set_properties({"ram": 16}, targets=1)
    assert mec.get_properties(targets=[0, 1, 2]) == [{"ram": 8, "gpu": False},
                                                     {"ram": 16, "gpu": False}, {}]
    assert mec.get_properties("ram", targets=1) == [{"ram": 16}]
    assert mec.has_properties("ram") == [True, True, False, False]
    assert mec.has_properties(["ram", "cpu"], targets=0) == [[True, False]]
    mec.del_properties("gpu")
    assert mec.get_properties(targets=0) == [{"ram": 8}]
    with pytest.raises(client.CompositeError, match=r"\[2:get_properties\]: KeyError"):
        mec.get_properties(["ram"])
    mec.clear_properties()
    assert mec.get_properties() == [{}] * 4


def test_flush_drops_results_not_read(mec):
    pr = mec.execute("x = 1", block=False)
    mec.barrier([mec.execute("y = 1", block=False)])
    assert mec.flush() is None
    with pytest.raises(client.PlaitError, match="already taken, flushed or never issued"):
        pr.get_result()
    assert mec.clear_pending_results() is None


def test_get_pending_deferred(mec):
    pr = mec.execute("x = 1", block=False)
    results = mec.get_pending_deferred(pr.result_id)
    assert [r["input"]["raw"] for r in results] == ["x = 1"] * 4


def test_benchmark(mec):
    report = mec.benchmark(push_size=1000)
    assert report["engines"] == 4 and report["push_bytes"] == 8000
    assert 0 < report["latency"]["one"] < 1 and 0 < report["latency"]["all"] < 1
    assert report["throughput"]["one"] > 0 and report["throughput"]["all"] > 0
    assert mec.keys() == [[]] * 4  # the data pushed is gone


def test_asynchronous_client_in_twisted_code(cluster4):
    furl = cluster4.furl_file("mec")

    @defer.inlineCallbacks
    def session():
        mec = yield client.AsyncMultiEngineClient.connect(furl)
        yield mec.reset()
        out = {"ids": (yield mec.get_ids())}
        yield mec.execute("a = 5")
        out["a"] = yield mec["a"]
        yield mec.scatter("x", range(8))
        out["x"] = yield mec.gather("x")
        out["map"] = yield mec.map(lambda v: v + 1, range(4))
        mec.block = False
        pr = yield mec.execute("b = a * 2")
        out["pending"] = isinstance(pr, client.PendingResult)
        yield mec.barrier([pr])
        mec.block = True
        out["b"] = yield mec.pull("b", targets=0)
        try:
            yield mec.execute("1/0", targets=1)
        except client.CompositeError as e:
            out["error"] = str(e).splitlines()[1]
        return out

    assert in_reactor(session) == {
        "ids": [0, 1, 2, 3], "a": [5] * 4, "x": list(range(8)), "map": [1, 2, 3, 4],
        "pending": True, "b": [10], "error": "[1:execute]: ZeroDivisionError: division by zero",
    }


def test_blocking_client_under_a_running_asyncio_loop(cluster4, tmp_path):
    """As in Jupyter: the main thread runs an asyncio loop while the client blocks."""
    script = tmp_path / "loop.py"
    script.write_text(textwrap.dedent(f"""
        import asyncio
        from plait.kernel import client

        async def main():
            mec = client.MultiEngineClient({cluster4.furl_file("mec")!r})
            await asyncio.sleep(0)
            mec.execute("z = 3")
            print(mec.pull("z"), mec.map(lambda x: -x, range(3)))
            print(mec.execute("w = 1", block=False).r[0]["input"]["raw"])

        asyncio.run(main())
    """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=60, env=cluster4.env)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "[3, 3, 3, 3] [0, -1, -2]\nw = 1\n"


def test_scatter_and_map_follow_engines_that_come_and_go(cluster_factory):
    """'all' means the engines registered now, though the ids are not asked for each time."""

    cluster = cluster_factory(2)
    mec = cluster.mec()
    assert mec.map(lambda x: x, range(4)) == [0, 1, 2, 3]
    mec.scatter("a", range(6))
    assert mec.pull("a") == [[0, 1, 2], [3, 4, 5]]
    extra = subprocess.Popen([sys.executable, "-m", "plait.scripts.ipengine",
                              cluster.enroll_flag()], env=cluster.env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for_engines(mec, 3) == [0, 1, 2]
        mec.scatter("a", range(6))  # prepared for engines [0, 1]: redone for [0, 1, 2]
        assert mec.pull("a") == [[0, 1], [2, 3], [4, 5]]
        mec.execute("import os; pid = os.getpid()")
        assert mec.map(lambda x: x * 2, range(3)) == [0, 2, 4]
        assert mec.pull("pid", targets=2) == [extra.pid]
        mec.kill(targets=0)
        assert mec.map(lambda x: x + 1, range(4)) == [1, 2, 3, 4]
        mec.scatter("b", "abcd")
        assert mec.pull("b") == ["ab", "cd"]
    finally:
        extra.kill()
        extra.wait()


def _gone(pid: int, timeout: float = 30.0) -> bool:
    """Whether process ``pid`` exits within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.02)
    return False


def test_kill_engines_then_the_controller(cluster_factory):
    cluster = cluster_factory(2)
    state = cluster.state()
    mec = cluster.mec()
    mec.block = False
    busy = mec.execute("import time; time.sleep(0.2)", targets=1)
    waiting = [mec.execute(f"n = {k}", targets=1) for k in range(10)]
    mec.block = True
    assert mec.kill(targets=1) == [None]
    assert mec.get_ids() == [0]  # kill returns once the engine is gone
    outcomes = []
    for pending in [busy, *waiting]:  # those already sent to the engine may have run
        try:
            pending.get_result()
            outcomes.append("ran")
        except client.CompositeError as e:
            assert "[1:execute]: EngineError: engine 1 was lost" in str(e)
            outcomes.append("lost")
    assert outcomes[-1] == "lost" and outcomes == sorted(outcomes, reverse=True)
    with pytest.raises(client.InvalidEngineID, match="registered engines: \\[0\\]"):
        mec.execute("x = 1", targets=1)
    assert mec.kill(controller=True) == [None]
    assert _gone(state["controller"]) and _gone(state["engines"][0])


def test_pending_results_belong_to_their_client(cluster4):
    """One client's flush or ids cannot touch another client's pending results."""
    from plait.kernel.client import ResultAlreadyRetrieved

    a, b = cluster4.mec(), cluster4.mec()
    pr = a.execute("import time; time.sleep(0.3); x = 1", targets=0, block=False)
    assert b.flush() is None  # b has nothing to flush, and must not drop a's result
    with pytest.raises(ResultAlreadyRetrieved):
        b.get_pending_deferred(pr.result_id)
    assert pr.get_result()[0]["input"]["raw"].endswith("x = 1")
