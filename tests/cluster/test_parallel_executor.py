"""The engines as a concurrent.futures Executor (``rc.executor()``,
``lview.executor``) and as a joblib backend, over a real 4-engine cluster."""

from __future__ import annotations

import concurrent.futures
import os
import sys
import threading

import cloudpickle
import pytest

import plait.parallel as ipp
from support.cluster import Gate

# The engines cannot import this module: its functions travel by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _fail_on(x: int, bad: int) -> int:
    if x == bad:
        raise ValueError(f"bad {x}")
    return x * 10


@pytest.fixture(scope="module")
def rc(cluster4):
    client = cluster4.rc()
    client.wait_for_engines(4, timeout=30)
    yield client
    client.close()


def test_submit_map_and_shutdown(rc):
    engines = set(rc[:].apply_sync(os.getpid))
    with rc.executor() as ex:
        assert isinstance(ex, concurrent.futures.Executor)
        futures = [ex.submit(pow, 2, i) for i in range(20)]
        done = {f.result() for f in concurrent.futures.as_completed(futures, timeout=30)}
        assert done == {2**i for i in range(20)}
        assert list(ex.map(pow, [2, 3, 4], [5, 6])) == [32, 729]  # as zip: the shortest
        assert list(ex.map(abs, range(-50, 0), chunksize=7)) == list(range(50, 0, -1))
        assert ex.submit(os.getpid).result(timeout=30) in engines
        assert ex.submit(pow, 3, exp=2).result(timeout=30) == 9
    with pytest.raises(RuntimeError, match="shut down"):
        ex.submit(pow, 2, 2)
    with pytest.raises(RuntimeError, match="shut down"):
        ex.map(abs, [1])
    lview = rc.load_balanced_view(targets=[1, 2])
    assert lview.executor().submit(os.getpid).result(timeout=30) in set(
        rc[[1, 2]].apply_sync(os.getpid))
    assert lview.executor.submit(pow, 2, 3).result(timeout=30) == 8


def test_map_raises_the_error_where_it_is_reached(rc):
    ex = rc.executor()
    results = ex.map(_fail_on, range(6), [3] * 6)
    assert [next(results) for _ in range(3)] == [0, 10, 20]
    with pytest.raises(ipp.RemoteError, match="bad 3") as caught:
        next(results)
    assert caught.value.ename == "ValueError"
    with pytest.raises(ValueError, match="chunksize"):
        ex.map(abs, [1], chunksize=0)


def test_map_times_out_from_the_call(rc, tmp_path):
    gate = tmp_path / "gate"
    os.mkfifo(gate)

    def wait_for_gate(path: str) -> int:
        with open(path) as f:
            return len(f.read())

    ex = rc.executor()
    results = ex.map(wait_for_gate, [str(gate)], timeout=0.2)
    with pytest.raises(TimeoutError):
        next(results)
    with open(gate, "w") as f:  # (lets the task end)
        f.write("x")


def test_a_done_callback_may_block_and_submit_more(rc, tmp_path):
    ex = rc.executor()
    chained: list = []
    done = threading.Event()
    gate = Gate(tmp_path)

    def then(future) -> None:  # runs in the callback thread, not the reactor's
        chained.append(threading.current_thread().name)
        chained.append(ex.submit(len, future.result()).result(timeout=30))
        done.set()

    future = ex.submit(gate.waiter())
    future.add_done_callback(then)  # (not done: its task waits at the gate)
    gate.open()
    assert done.wait(30)
    assert chained == ["plait-callbacks", 2]
    now: list = []  # added once done, as concurrent.futures does: called at once, here
    future.add_done_callback(lambda f: now.append(threading.current_thread().name))
    assert now == [threading.current_thread().name]


def test_shutdown_with_cancel_futures_aborts_what_has_not_finished(rc, tmp_path):
    gate = tmp_path / "gate"
    os.mkfifo(gate)

    def wait_for_gate(path: str) -> str:  # (never let through: it is interrupted)
        with open(path) as f:
            return f.read()

    ex = rc.load_balanced_view(targets=[3]).executor
    first = ex.submit(wait_for_gate, str(gate))
    later = [ex.submit(pow, 2, i) for i in range(3)]
    ex.shutdown(wait=False, cancel_futures=True)
    for ar in later:
        with pytest.raises(ipp.error.TaskAborted):
            ar.get(timeout=30)
    with pytest.raises((ipp.error.TaskAborted, ipp.RemoteError)):
        first.get(timeout=30)  # interrupted, or aborted before it started
    assert rc[3].apply_sync(pow, 2, 5) == 32  # the engine goes on


def test_scikit_learn_n_jobs_runs_on_the_engines(rc, cluster4, monkeypatch):
    """What the joblib backend is for: scikit-learn's ``n_jobs`` on the engines."""
    pytest.importorskip("sklearn")
    import joblib
    from sklearn.datasets import make_classification
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    ipp.register_joblib_backend()
    monkeypatch.setenv("PLAIT_DIR", str(cluster4.plait_dir))
    X, y = make_classification(n_samples=200, n_features=8, random_state=0)
    here = cross_val_score(LogisticRegression(), X, y, cv=4)
    before = sum(e["completed"] for e in _engine_status(rc))
    with joblib.parallel_config(backend="plait"):
        there = cross_val_score(LogisticRegression(), X, y, cv=4, n_jobs=-1)
    assert list(there) == list(here)  # the same folds, the same scores
    assert sum(e["completed"] for e in _engine_status(rc)) >= before + 4  # (on the engines)


def _engine_status(rc) -> list[dict]:
    status = rc.queue_status()
    return [v for k, v in status.items() if k != "unassigned"]


def test_joblib_runs_on_the_engines(rc, cluster4, monkeypatch):
    joblib = pytest.importorskip("joblib")
    ipp.register_joblib_backend()
    engines = set(rc[:].apply_sync(os.getpid))
    monkeypatch.setenv("PLAIT_DIR", str(cluster4.plait_dir))  # (the default Client's)
    with joblib.parallel_config(backend="plait"):
        values = joblib.Parallel(n_jobs=-1)(joblib.delayed(pow)(2, i) for i in range(40))
        pids = joblib.Parallel(n_jobs=-1, batch_size=1)(
            joblib.delayed(os.getpid)() for _ in range(12))
    assert values == [2**i for i in range(40)]
    assert set(pids) <= engines and len(set(pids)) > 1
    # a view of one's own, and an error raised as the task's
    view = rc.load_balanced_view(targets=[0])
    with joblib.parallel_config(backend="plait", view=view):
        assert set(joblib.Parallel()(joblib.delayed(os.getpid)() for _ in range(5))) == {
            rc[0].apply_sync(os.getpid)}
        with pytest.raises(ipp.RemoteError, match="bad 2"):
            joblib.Parallel()(joblib.delayed(_fail_on)(i, 2) for i in range(4))
