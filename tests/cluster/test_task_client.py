"""The TaskClient against a real 4-engine cluster: what a user sees.

Tasks that must stay running while the test looks at them wait on a
:class:`Gate` (a named pipe the test opens when it is done looking), so no
test depends on timing.
"""

from __future__ import annotations

import sys
import time

import cloudpickle
import pytest

from plait.kernel import client
from support import in_reactor as call
from support.cluster import Gate, opened_once_a_bar_shows

# The controller and the engines cannot import this module: its functions
# travel by value, as those of an interactive session do.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def tc(cluster4):
    return cluster4.tc()


@pytest.fixture
def mec(cluster4):
    mec = cluster4.mec()
    mec.reset()
    mec.clear_properties()
    return mec


# -- connecting -----------------------------------------------------------------------------
def test_connect_by_profile_default_and_file(cluster4, monkeypatch):
    monkeypatch.setenv("PLAIT_DIR", str(cluster4.plait_dir))
    for tc in (client.TaskClient(), client.TaskClient(profile="default"),
               client.TaskClient(cluster4.furl_file("tc"))):
        assert tc.get_task_result(tc.run(client.Task("a = 1", pull="a")), block=True).ns.a == 1


def test_a_missing_furl_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="ipcontroller-tc.furl"):
        client.TaskClient(str(tmp_path / "ipcontroller-tc.furl"))


# -- the quick start of the reference -----------------------------------------------------------
def test_quickstart_thousand_tasks(tc):
    taskids = [tc.run(client.Task(f"a = {n}", pull="a")) for n in range(1000)]
    assert all(isinstance(t, int) for t in taskids)
    assert taskids == sorted(taskids) and len(set(taskids)) == 1000
    tc.barrier(taskids)
    results = [tc.get_task_result(t) for t in taskids]
    tr = results[73]
    assert repr(tr) == f"TaskResult[ID:{taskids[73]}]:{{'a': 73}}"
    assert tr.results == {"a": 73} and tr.results["a"] == 73 and tr.ns.a == 73
    assert tr.engineid in (0, 1, 2, 3) and tr.taskid == taskids[73]
    assert tr.submitted <= tr.started <= tr.completed
    assert 0 <= tr.duration < (tr.completed - tr.submitted).total_seconds() + 1e-3
    assert [r.ns.a for r in results] == list(range(1000))
    assert {r.engineid for r in results} == {0, 1, 2, 3}


def test_task_is_string_task():
    assert client.Task is client.StringTask


# -- get_task_result, barrier, queue_status, abort, spin, clear ------------------------------------
def test_results_are_none_until_done_and_tasks_show_as_pending(tc, tmp_path):
    gate = Gate(tmp_path)
    taskid = tc.run(client.StringTask(gate.wait_code + "\nb = 2", pull="b"))
    assert tc.get_task_result(taskid) is None
    status = tc.queue_status(verbose=True)
    assert taskid in status["pending"]
    assert set(status) >= {"scheduled", "pending", "succeeded", "failed"}
    counts = tc.queue_status()
    assert counts["pending"] >= 1 and all(isinstance(v, int) for v in counts.values())
    gate.open()
    assert tc.get_task_result(taskid, block=True).results == {"b": 2}
    assert taskid in tc.queue_status(verbose=True)["succeeded"]


def test_barrier_takes_one_id_or_a_list(tc):
    one = tc.run(client.MapTask(sum, args=([1, 2],)))
    tc.barrier(one)
    many = [tc.run(client.MapTask(abs, args=(-i,))) for i in range(20)]
    assert tc.barrier(many) is None
    assert [tc.get_task_result(t).results for t in many] == list(range(20))
    assert tc.get_task_result(one).results == 3


def test_unknown_ids_are_clear_errors(tc):
    with pytest.raises(client.InvalidTaskID, match="no task with id 10000000"):
        tc.get_task_result(10_000_000)
    with pytest.raises(client.InvalidTaskID):
        tc.barrier([10_000_000])
    with pytest.raises(TypeError, match="task id"):
        tc.get_task_result("3")


def never(properties):
    return False


def test_abort_a_scheduled_task(tc):
    taskid = tc.run(client.StringTask("ran = True", depend=never))
    assert taskid in tc.queue_status(verbose=True)["scheduled"]
    assert tc.abort(taskid) is None
    result = tc.get_task_result(taskid, block=True)
    assert result.status == "aborted" and result.results is None
    assert "aborted" in str(result.failure) and result.engineid is None
    with pytest.raises(client.TaskAborted, match="aborted before it ran"):
        result.raise_exception()
    assert taskid in tc.queue_status(verbose=True)["aborted"]


def test_abort_a_running_task_reports_it_at_once(tc, tmp_path):
    gate = Gate(tmp_path)
    started = Gate(tmp_path, "started")  # the task says it runs through this one
    code = f"open({started.path!r}, 'w').write('1')\n" + gate.wait_code + "\nx = 1"
    taskid = tc.run(client.StringTask(code, pull="x"))
    with open(started.path) as f:
        assert f.read() == "1"  # it runs now
    tc.abort(taskid)
    result = tc.get_task_result(taskid, block=True)  # without waiting for the engine
    assert result.status == "aborted"
    assert "it is interrupted" in str(result.failure)
    # it was interrupted where it waited for the gate: its engine is free for more
    tc.barrier([tc.run(client.StringTask("pass")) for _ in range(8)])


def test_abort_a_finished_task_is_an_index_error(tc):
    taskid = tc.run(client.StringTask("x = 1"))
    tc.barrier(taskid)
    with pytest.raises(IndexError, match=f"task {taskid} already completed"):
        tc.abort(taskid)
    with pytest.raises(client.TaskAlreadyCompleted):
        tc.abort(taskid)


def test_spin_and_clear(tc):
    assert tc.spin() is None
    taskid = tc.run(client.StringTask("x = 1"))
    tc.barrier(taskid)
    assert tc.clear([taskid]) == 1
    with pytest.raises(client.InvalidTaskID):
        tc.get_task_result(taskid)
    tc.barrier(tc.run(client.StringTask("x = 2")))
    assert tc.clear() >= 1  # this client's finished tasks
    assert tc.clear(all_clients=True) >= 0  # and every other client's
    assert tc.queue_status()["succeeded"] == 0


def test_clear_forgets_only_this_clients_results_unless_asked_for_all(cluster4):
    mine, theirs = cluster4.tc(), cluster4.tc()
    a = mine.run(client.StringTask("x = 1", pull="x"))
    b = theirs.run(client.StringTask("x = 2", pull="x"))
    mine.barrier(a)
    theirs.barrier(b)
    assert mine.clear() == 1
    with pytest.raises(client.InvalidTaskID):
        mine.get_task_result(a)
    assert theirs.get_task_result(b).ns.x == 2  # another client's result is kept
    assert mine.clear(all_clients=True) >= 1
    with pytest.raises(client.InvalidTaskID):  # (theirs keeps its own copy of what it got)
        cluster4.tc().get_task_result(b)


def test_clear_refuses_unfinished_tasks(tc):
    taskid = tc.run(client.StringTask("x = 1", depend=never))
    with pytest.raises(ValueError, match="only finished tasks can be cleared"):
        tc.clear([taskid])
    tc.abort(taskid)
    assert tc.clear([taskid]) == 1


# -- what a task does --------------------------------------------------------------------------
def test_push_and_pull(tc):
    t = client.StringTask("c = a + b", push={"a": 1, "b": 2}, pull=["a", "c"])
    assert tc.get_task_result(tc.run(t), block=True).results == {"a": 1, "c": 3}
    t = client.StringTask("c = 5")
    assert tc.get_task_result(tc.run(t), block=True).results == {}


def test_options_as_attributes(tc):
    t = client.StringTask("d = 1")
    t.pull = "d"
    t.push = {"unused": 0}
    t.retries = 1
    result = tc.get_task_result(tc.run(t), block=True)
    assert result.ns.d == 1


def test_clear_before_and_after(tc, mec):
    mec.push({"leftover": 1})
    t = client.StringTask("seen = 'leftover' in globals()", pull="seen", clear_before=True)
    assert tc.get_task_result(tc.run(t), block=True).ns.seen is False
    t = client.StringTask("secret = 42", pull="secret", clear_after=True)
    result = tc.get_task_result(tc.run(t), block=True)
    assert result.ns.secret == 42
    assert "secret" not in mec.keys(targets=result.engineid)[0]


def test_both_interfaces_on_the_same_engines(tc, mec):
    mec.push({"k": 5})
    results = [tc.run(client.StringTask("b = k * 2", pull="b")) for _ in range(8)]
    tc.barrier(results)
    assert {tc.get_task_result(t).ns.b for t in results} == {10}
    assert mec.pull("k") == [5, 5, 5, 5]


def test_map_task_results_are_the_return_value(tc):
    def power(x, exponent=2):
        return x ** exponent

    result = tc.get_task_result(tc.run(client.MapTask(power, args=(3,),
                                                      kwargs={"exponent": 3})), block=True)
    assert result.results == 27
    with pytest.raises(AttributeError, match="use .results"):
        result.ns  # noqa: B018
    assert repr(result).endswith(":27")


def test_a_failing_task_carries_the_exception(tc):
    result = tc.get_task_result(tc.run(client.StringTask("1/0")), block=True)
    assert result.status == "failed" and result.results is None
    assert result.failure.ename == "ZeroDivisionError"
    assert "1/0" in result.failure.traceback
    assert repr(result).startswith(f"TaskResult[ID:{result.taskid}]:failed: ZeroDivisionError")
    with pytest.raises(ZeroDivisionError):
        result.raise_exception()
    missing = tc.get_task_result(tc.run(client.StringTask("a = 1", pull="nope")), block=True)
    assert missing.failure.ename == "NameError" and "nope" in missing.failure.evalue


def test_malformed_tasks_are_refused_at_run(tc):
    with pytest.raises(client.TaskSpecError, match="pull"):
        tc.run(client.StringTask("a = 1", pull=["not a name"]))
    with pytest.raises(client.TaskSpecError, match="retries"):
        tc.run(client.StringTask("a = 1", retries=-1))
    with pytest.raises(TypeError, match="StringTask or a MapTask"):
        tc.run("a = 1")
    with pytest.raises(client.SerializationError):
        tc.run(client.StringTask("a = 1", push={"gen": (x for x in [])}))


def test_recovery_loops_are_refused_at_run(tc):
    first = client.StringTask("1/0")
    second = client.StringTask("1/0", recovery_task=first)
    first.recovery_task = second
    with pytest.raises(client.RecoveryLoopError, match="loops"):
        tc.run(first)


# -- fault tolerance ----------------------------------------------------------------------------
def test_retries_move_a_failed_task_to_another_engine(tc, tmp_path):
    marker = str(tmp_path / "failed-once")
    code = (
        "import os\n"
        "if not os.path.exists(marker):\n"
        "    open(marker, 'w').close()\n"
        "    raise RuntimeError('first try fails')\n"
        "ok = True"
    )
    result = tc.get_task_result(
        tc.run(client.StringTask(code, push={"marker": marker}, pull="ok", retries=2)),
        block=True)
    assert result.ns.ok and result.attempts == 2
    assert len(result.failed_on) == 1 and result.engineid != result.failed_on[0]


def test_recovery_task_runs_once_retries_are_spent(tc):
    rescue = client.StringTask("saved = True", pull="saved")
    taskid = tc.run(client.StringTask("1/0", retries=1, recovery_task=rescue))
    result = tc.get_task_result(taskid, block=True)
    # as in the reference system: the recovery task's result, in the task's place
    assert result.status == "succeeded" and result.ns.saved is True and result.attempts == 2
    assert result.recovered_from.ename == "ZeroDivisionError"  # its own failure, kept
    recovered = tc.get_task_result(result.recovery_taskid, block=True)
    assert recovered.ns.saved is True and recovered.recovery_of == taskid


# -- dependencies ------------------------------------------------------------------------------
def has_gpu(properties):
    return properties.get("gpu", False)


def test_depend_on_properties_set_by_the_multiengine_client(tc, mec):
    mec.set_properties({"gpu": True}, targets=2)
    ids = [tc.run(client.StringTask("x = 1", depend=has_gpu)) for _ in range(5)]
    tc.barrier(ids)
    assert {tc.get_task_result(t).engineid for t in ids} == {2}


def ram_at_least_4gb(properties):
    return properties["RAM"] > 2 ** 32


def test_a_task_no_engine_can_run_waits_until_properties_change(tc, mec):
    # no engine has 'RAM': the depend raises KeyError, which counts as False
    taskid = tc.run(client.StringTask("y = 1", pull="y", depend=ram_at_least_4gb))
    assert taskid in tc.queue_status(verbose=True)["scheduled"]
    assert tc.get_task_result(taskid) is None
    mec.set_properties({"RAM": 2 ** 34}, targets=1)  # no spin() needed
    result = tc.get_task_result(taskid, block=True)
    assert result.engineid == 1 and result.ns.y == 1


def test_a_depend_the_controller_cannot_load_fails_the_task_clearly(tc, tmp_path,
                                                                   monkeypatch):
    (tmp_path / "only_here.py").write_text("def check(properties):\n    return True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import only_here

    result = tc.get_task_result(tc.run(client.StringTask("x = 1", depend=only_here.check)),
                                block=True)
    assert result.status == "failed" and result.engineid is None
    assert result.failure.ename == "SerializationError"
    assert "only_here" in result.failure.evalue


def test_depend_on_properties_set_on_the_engine_itself(tc, mec):
    mec.execute("from plait.kernel.engine.interpreter import get_interpreter\n"
                "get_interpreter().properties['gpu'] = True", targets=3)
    taskid = tc.run(client.StringTask("z = 1", depend=has_gpu))
    assert tc.get_task_result(taskid, block=True).engineid == 3


# -- map and parallel ---------------------------------------------------------------------------
def test_map_like_the_reference(tc):
    serial_result = list(map(lambda x: x ** 10, range(32)))
    parallel_result = tc.map(lambda x: x ** 10, range(32))
    assert serial_result == parallel_result


def test_map_over_several_sequences_and_edge_cases(tc):
    assert tc.map(lambda a, b: a * b, [1, 2, 3], [4, 5, 6, 7]) == [4, 10, 18]
    assert tc.map(str, []) == []
    assert tc.map(abs, range(-50, 50), chunksize=7) == [abs(i) for i in range(-50, 50)]
    with pytest.raises(TypeError, match="unknown map option"):
        tc.map(abs, [1], pull="x")
    with pytest.raises(ValueError, match="chunksize"):
        tc.map(abs, [1], chunksize=0)


def test_map_raises_the_first_failure(tc):
    def inverse(x):
        return 1 / x

    with pytest.raises(ZeroDivisionError):
        tc.map(inverse, [1, 2, 0, 4])


def test_map_leaves_nothing_behind(tc):
    tc.barrier(tc.run(client.StringTask("x = 1")))
    tc.clear()
    tc.map(abs, range(100))
    status = tc.queue_status()
    assert status["succeeded"] == 0 and status["pending"] == 0


# -- progress ------------------------------------------------------------------------------
def test_barrier_and_map_show_their_progress_when_asked(tc, mec, capsys):
    ids = [tc.run(client.StringTask(f"x = {i}")) for i in range(10)]
    tc.barrier(ids, progress=True)
    err = capsys.readouterr().err
    assert "plait: barrier: 10/10 tasks done after" in err and err.count("10/10") == 1
    with pytest.raises(TypeError):
        tc.barrier(ids, True)  # (progress is a keyword)
    with pytest.raises(client.TaskSpecError, match="timeout must be"):  # (a task option,
        tc.map(abs, [1], timeout=-1)  # not the blocking call's own)
    results = tc.get_task_results(ids, block=True, progress=True)
    assert [r.status for r in results] == ["succeeded"] * 10
    assert "plait: results: 10/10 tasks done" in capsys.readouterr().err
    assert tc.map(abs, range(-20, 0), chunksize=5, progress=True) == list(range(20, 0, -1))
    assert "plait: map: 4/4 tasks done after" in capsys.readouterr().err
    mec.block = False
    try:
        prs = [mec.execute("y = 1"), mec.execute("y = 2")]
    finally:
        mec.block = True
    mec.barrier(prs, progress=True)
    assert "plait: barrier: 2/2 tasks done" in capsys.readouterr().err
    # the MultiEngine map counts its engines' blocks as each comes back
    assert mec.map(abs, range(-8, 0), progress=True) == list(range(8, 0, -1))
    assert "plait: map: 4/4 tasks done" in capsys.readouterr().err

    def inverse(x):
        return 1 / x

    errors = []
    for progress in (False, True):  # the same error either way
        with pytest.raises(client.CompositeError) as failed:
            mec.map(inverse, [1, 0, 2, 0, 3, 4, 5, 6], progress=progress)
        errors.append(sorted((engine_id, method, str(failure))
                             for engine_id, method, failure in failed.value.elist))
    assert errors[0] == errors[1] and len(errors[0]) == 2, errors
    capsys.readouterr()
    tc.barrier(tc.run(client.StringTask("x = 1")))  # by default: none outside IPython
    assert tc.map(abs, [-1, -2]) == [1, 2] and capsys.readouterr().err == ""


def test_a_tqdm_bar_in_a_terminal_and_in_ipython_once_the_wait_is_long(tc, capsys,
                                                                       monkeypatch, tmp_path):
    from plait.kernel.client import _progress

    monkeypatch.setattr(_progress, "_terminal", lambda: True)
    assert tc.map(abs, range(6), chunksize=2, progress=True) == list(range(6))
    err = capsys.readouterr().err
    assert "3/3" in err and "100%" in err  # tqdm's bar, finished
    monkeypatch.setattr(_progress, "_terminal", lambda: False)
    monkeypatch.setattr(_progress, "_shell", lambda: "TerminalInteractiveShell")
    tc.barrier(tc.run(client.StringTask("x = 1")))  # shorter than PROGRESS_AFTER: nothing
    assert capsys.readouterr().err == ""
    with opened_once_a_bar_shows(monkeypatch, tmp_path) as (gate, shown):
        held = tc.run(client.StringTask(gate.wait_code))
        tc.barrier([held, tc.run(client.StringTask("x = 2"))])  # (ends once a bar shows)
    assert shown.is_set() and "plait: barrier: 2/2 tasks done" in capsys.readouterr().err


def test_the_asynchronous_client_counts_in_a_tally(cluster4):
    from plait.kernel.client._progress import Tally

    async_tc = call(client.AsyncTaskClient.connect, cluster4.furl_file("tc"))
    try:
        ids = [call(async_tc.run, client.StringTask(f"x = {i}")) for i in range(5)]
        tally = Tally()
        assert call(async_tc.barrier, ids, tally=tally) is None
        assert (tally.done, tally.total) == (5, 5)
        tally = Tally()
        assert call(async_tc.map, abs, range(-9, 0), chunksize=3, tally=tally) == [
            9, 8, 7, 6, 5, 4, 3, 2, 1]
        assert (tally.done, tally.total) == (3, 3)
    finally:
        call(async_tc.close)


def test_parallel_decorator_and_mapper(tc):
    @tc.parallel()
    def f(x):
        return 10.0 * x ** 4

    assert f(range(32))[:3] == [0.0, 10.0, 160.0]
    assert f.map(range(4)) == [0.0, 10.0, 160.0, 810.0]
    assert f.__name__ == "f"
    mapper = tc.mapper(chunksize=1, retries=1)
    assert mapper.map(lambda x, y: x + y, [1, 2], [3, 4]) == [4, 6]


# -- large data ---------------------------------------------------------------------------------
def test_large_arguments_and_results_use_the_bulk_channel(tc):
    blob = b"x" * (3 << 20)
    taskid = tc.run(client.MapTask(len, args=(blob,), retries=1))
    assert tc.get_task_result(taskid, block=True).results == 3 << 20
    big = tc.run(client.MapTask(bytes, args=(3 << 20,)))
    small = tc.run(client.MapTask(abs, args=(-1,)))
    assert len(tc.get_task_result(big, block=True).results) == 3 << 20
    assert tc.get_task_result(big).results == bytes(3 << 20)  # kept by the client
    assert tc.get_task_result(small, block=True).results == 1


def test_a_chain_of_large_tasks_goes_by_the_bulk_channel(tc):
    second = client.MapTask(len, args=(b"y" * 700_000,))
    first = client.MapTask(len, args=(b"x" * 700_000,), recovery_task=second)
    assert tc.get_task_result(tc.run(first), block=True).results == 700_000


def test_a_task_too_large_to_submit_is_refused_at_run(tc):
    big = b"z" * (2 << 20)
    with pytest.raises(client.TaskSpecError, match="too large"):
        tc.run(client.StringTask("x = 1", depend=lambda properties: big is not None))


# -- the asynchronous client ------------------------------------------------------------------------
def test_async_client_in_twisted_code(cluster4):
    from twisted.internet import defer

    @defer.inlineCallbacks
    def session():
        tc = yield client.AsyncTaskClient.connect(cluster4.furl_file("tc"))
        taskid = yield tc.run(client.StringTask("a = 6 * 7", pull="a"))
        result = yield tc.get_task_result(taskid, block=True)
        values = yield tc.map(lambda x: -x, [1, 2])
        return result.ns.a, values

    assert call(session) == (42, [-1, -2])


def test_run_returns_before_the_controller_answers(tc):
    tasks = [client.MapTask(int) for _ in range(200)]
    start = time.perf_counter()
    ids = [tc.run(t) for t in tasks]
    elapsed = time.perf_counter() - start
    tc.barrier(ids)
    assert elapsed < 200 * 0.5e-3  # far less than one round trip each


def test_every_call_works_over_foolscap_too(cluster4):
    """Without a channel (an old controller, or one that refuses it) calls use foolscap."""
    from twisted.internet import defer

    from plait.kernel.client._base import resolve_furl
    from plait.security import client_tub

    @defer.inlineCallbacks
    def session():
        furl, source = resolve_furl(cluster4.furl_file("tc"), None, "ipcontroller-tc.furl")
        ref = yield client_tub().getReference(furl)
        tc = yield client.AsyncTaskClient((ref, None), source)._started()
        assert tc._remote is not ref  # a session of its own
        ids = []
        for n in range(3):
            ids.append((yield tc.run(client.StringTask(f"a = {n}", pull="a"))))
        yield tc.barrier(ids)
        results = yield tc.get_task_results(ids)
        status = yield tc.queue_status(verbose=True)
        values = yield tc.map(abs, [-1, -2])
        cleared = yield tc.clear(ids)
        waiting = yield tc.run(client.StringTask("x", depend=never))
        yield tc.abort(waiting)
        yield tc.spin()
        info = yield tc.info()
        yield tc.close()  # ends the session at once
        return [r.ns.a for r in results], set(ids) <= set(status["succeeded"]), values, \
            cleared, info["engines"]

    assert call(session) == ([0, 1, 2], True, [1, 2], 3, 4)
