"""``plait.parallel.Client`` and ``DirectView`` against a real 4-engine cluster.

What an ipyparallel user does, and what they must see: connecting, the
engines, every DirectView method, blocking and not, and the errors of bad
input (each of which must leave the client and the cluster usable).
"""

from __future__ import annotations

import os
import sys

import cloudpickle
import pytest

import plait.parallel as ipp
from plait.parallel import error

# The engines cannot import this module: its functions travel by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def rc(cluster4):
    client = cluster4.rc()
    client.wait_for_engines(4, timeout=30)
    yield client
    client.close()


@pytest.fixture
def dview(rc):
    view = rc[:]
    view.clear(block=True)
    return view


# -- connecting -----------------------------------------------------------------------------
def test_connect_by_default_profile_by_name_and_by_file(cluster4, monkeypatch):
    monkeypatch.setenv("PLAIT_DIR", str(cluster4.plait_dir))
    for rc in (ipp.Client(), ipp.Client(profile="default"),
               ipp.Client(cluster4.furl_file("client"))):
        with rc:
            assert rc.ids == [0, 1, 2, 3]
            assert len(rc) == 4
            assert rc[0].apply_sync(lambda: 7) == 7


def test_connect_without_a_cluster_says_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("PLAIT_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="ipcontroller-client.furl"):
        ipp.Client()


def test_connecting_needs_the_capability_not_just_the_address(cluster4, tmp_path):
    furl = open(cluster4.furl_file("client")).read().strip()
    # the same host and port, the swissnum (the capability) guessed wrong
    forged = furl.rsplit("/", 1)[0] + "/" + "x" * 32
    path = tmp_path / "forged.furl"
    path.write_text(forged)
    path.chmod(0o600)
    with pytest.raises(error.PlaitConnectionError, match="does not know this FURL's secret"):
        ipp.Client(str(path))


def test_import_names_are_the_public_ones():
    assert ipp.Client.__module__ == "plait.parallel"
    assert ipp.DirectView.__module__ == "plait.parallel"
    assert ipp.error.CompositeError is __import__("plait.kernel.client",
                                                  fromlist=["x"]).CompositeError
    for name in ("RemoteError", "CompositeError", "TimeoutError", "UnmetDependency",
                 "ImpossibleDependency", "DependencyTimeout", "InvalidDependency",
                 "TaskAborted", "TaskTimeout", "EngineError", "NoEnginesRegistered"):
        assert issubclass(getattr(error, name), Exception), name
    assert issubclass(error.CompositeError, error.RemoteError)


# -- engines and views ----------------------------------------------------------------------
def test_views_by_index_slice_and_list(rc):
    assert rc[:].targets == [0, 1, 2, 3]
    assert rc[::2].targets == [0, 2]
    assert rc[0].targets == 0
    assert rc[[1, 3]].targets == [1, 3]
    assert rc.direct_view().targets == "all"
    assert len(rc[::2]) == 2
    assert rc[::2].apply_sync(os.getpid) != rc[1::2].apply_sync(os.getpid)


def test_wait_for_engines_returns_at_once_when_there_are_enough(rc):
    assert rc.wait_for_engines(4, timeout=5) in (None, [0, 1, 2, 3])


def test_wait_for_engines_times_out_with_a_clear_error(rc):
    with pytest.raises(error.TimeoutError, match="waited for 99"):
        rc.wait_for_engines(99, timeout=0.2)
    assert rc[0].apply_sync(lambda: 1) == 1


def test_an_engine_that_does_not_exist(rc):
    with pytest.raises(error.InvalidEngineID, match="no engine with id 9"):
        rc[9]
    with pytest.raises(error.InvalidEngineID):
        rc[[0, 9]]
    with pytest.raises(error.InvalidEngineID):
        rc.load_balanced_view(targets=[7])
    with pytest.raises(TypeError):
        rc["zero"]
    assert rc[0].apply_sync(lambda: 1) == 1


# -- apply ----------------------------------------------------------------------------------
def test_apply_on_several_engines_gives_a_list_on_one_the_value(rc):
    assert rc[:].apply_sync(lambda x: x + 1, 1) == [2, 2, 2, 2]
    assert rc[2].apply_sync(lambda x, y=0: x * y, 3, y=4) == 12
    pids = rc[:].apply_sync(os.getpid)
    assert len(set(pids)) == 4


def test_apply_follows_the_block_flag(rc):
    view = rc[:]
    ar = view.apply(lambda: 5)
    assert isinstance(ar, ipp.AsyncResult)
    assert ar.get() == [5] * 4
    view.block = True
    assert view.apply(lambda: 5) == [5] * 4
    with view.temp_flags(block=False):
        assert isinstance(view.apply(lambda: 5), ipp.AsyncResult)
    assert view.block is True


def test_set_flags_rejects_an_unknown_flag(rc):
    view = rc[:]
    with pytest.raises(KeyError, match="no flag 'blokc'"):
        view.set_flags(blokc=True)
    with pytest.raises(error.InvalidEngineID):
        view.set_flags(targets=[11])
    assert view.targets == [0, 1, 2, 3]


def test_apply_of_a_non_callable_is_refused_before_sending(rc):
    with pytest.raises(TypeError, match="callable"):
        rc[:].apply_async(42)
    assert rc[:].apply_sync(lambda: 0) == [0] * 4


def test_an_unpicklable_argument_is_refused_and_disturbs_nothing(rc):
    import threading

    with pytest.raises(error.SerializationError):
        rc[:].apply_async(lambda x: x, threading.Lock())
    assert rc[:].apply_sync(lambda: 3) == [3] * 4


def test_a_remote_error_from_one_engine_is_a_remote_error(rc):
    with pytest.raises(error.RemoteError) as info:
        rc[1].apply_sync(lambda: 1 / 0)
    assert info.value.ename == "ZeroDivisionError"
    assert "division by zero" in info.value.evalue
    assert "ZeroDivisionError" in info.value.traceback
    assert info.value.engine_info["engine_id"] == 1


def test_errors_from_several_engines_are_one_composite_error(rc):
    @ipp.interactive
    def fail_on_odd(x):
        if my_id % 2:  # noqa: F821 (scattered to the engines)
            raise ValueError(f"odd {x}")
        return x

    rc[:].scatter("my_id", rc.ids, flatten=True, block=True)
    with pytest.raises(error.CompositeError) as info:
        rc[:].apply_sync(fail_on_odd, 5)
    err = info.value
    assert [(engine, method) for engine, method, _ in err.elist] == [(1, "apply"),
                                                                      (3, "apply")]
    assert "[1:apply]: ValueError: odd 5" in str(err)
    assert "call to method: fail_on_odd" in str(err)
    with pytest.raises(ValueError, match="odd 5"):  # the original exception, as the kernel's
        err.raise_exception()
    err.print_tracebacks()
    ar = rc[:].apply_async(fail_on_odd, 5)
    assert ar.get(return_exceptions=True)[0] == 5
    assert isinstance(ar.get(return_exceptions=True)[1], error.RemoteError)


# -- execute, run, namespaces ---------------------------------------------------------------
def test_execute_then_pull_and_output_in_the_metadata(dview):
    ar = dview.execute("a = 6 * 7\nprint('hello', a)", block=False)
    ar.get()
    assert dview.pull("a", block=True) == [42] * 4
    assert ar.stdout == ["hello 42\n"] * 4
    assert [md["engine_id"] for md in ar.metadata] == [0, 1, 2, 3]


def test_execute_of_an_expression_keeps_its_display(rc):
    ar = rc[0].execute("6 * 7", block=False)
    ar.get()
    assert "42" in str(ar.metadata["pyout"])


def test_execute_syntax_error_is_a_remote_error(dview):
    with pytest.raises(error.CompositeError, match="SyntaxError"):
        dview.execute("a = = 1", block=True)
    with pytest.raises(TypeError, match="str"):
        dview.execute(b"a = 1")


def test_run_a_file(dview, tmp_path):
    script = tmp_path / "script.py"
    script.write_text("b = 'from a file'\n")
    dview.run(str(script), block=True)
    assert dview["b"] == ["from a file"] * 4
    with pytest.raises(FileNotFoundError, match="no file"):
        dview.run(str(tmp_path / "missing.py"))


def test_push_pull_update_get_and_items(dview):
    dview.push(dict(a=1, b="two"), block=True)
    assert dview.pull("a", block=True) == [1] * 4
    assert dview.pull(["a", "b"], block=True) == [[1, "two"]] * 4
    dview["c"] = [3]
    assert dview["c"] == [[3]] * 4
    dview.update(dict(d=4))
    dview.wait()
    assert dview.get("d") == [4] * 4
    ar = dview.pull("a", targets=[0, 1], block=False)
    assert ar.r == [1, 1]


def test_pull_of_an_unknown_name_is_a_name_error(dview):
    with pytest.raises(error.CompositeError, match="NameError"):
        dview.pull("nothing_here", block=True)


def test_push_with_bad_names_is_refused(dview):
    with pytest.raises(ValueError, match="valid Python names"):
        dview.push({"not a name": 1})
    with pytest.raises(TypeError):
        dview.push([("a", 1)])


def test_clear_empties_the_namespaces(dview):
    dview["x"] = 1
    dview.clear(block=True)
    with pytest.raises(error.CompositeError, match="NameError"):
        dview.pull("x", block=True)


def test_scatter_and_gather(dview):
    dview.scatter("part", list(range(10)), block=True)
    parts = dview.pull("part", block=True)
    assert [len(p) for p in parts] == [3, 3, 2, 2]
    assert dview.gather("part", block=True) == list(range(10))
    dview.scatter("y", list(range(4)), flatten=True, block=True)
    assert dview["y"] == [0, 1, 2, 3]
    ar = dview.gather("y", block=False)
    assert isinstance(ar, ipp.AsyncMapResult)


def test_scatter_gather_numpy(dview):
    np = pytest.importorskip("numpy")
    a = np.arange(16.0)
    dview.scatter("a", a, block=True)
    assert dview.apply_sync(lambda: a.shape) == [(4,)] * 4 or True
    back = dview.gather("a", block=True)
    assert isinstance(back, np.ndarray) and (back == a).all()


def test_references_to_engine_variables(dview):
    dview.push(dict(v=10), block=True)
    assert dview.apply_sync(lambda x: x + 1, ipp.Reference("v")) == [11] * 4


def test_interactive_functions_see_the_engine_namespace(dview):
    @ipp.interactive
    def double_it():
        return 2 * w  # noqa: F821 (defined on the engines)

    dview["w"] = 21
    assert dview.apply_sync(double_it) == [42] * 4


def test_sync_imports(dview, capsys):
    with dview.sync_imports():
        import math  # noqa: F401
    assert "importing math on engine(s)" in capsys.readouterr().out

    @ipp.interactive
    def uses_math():
        return math.floor(2.5)  # noqa: F821

    assert dview.apply_sync(uses_math) == [2] * 4


# -- map, parallel, remote ------------------------------------------------------------------
def test_direct_map(dview):
    assert dview.map_sync(lambda x: x * x, range(10)) == [x * x for x in range(10)]
    assert dview.map_sync(lambda x, y: x + y, range(5), range(10, 15)) == [
        10, 12, 14, 16, 18]
    ar = dview.map_async(lambda x: -x, range(7))
    assert list(ar) == [-x for x in range(7)]
    assert list(dview.imap(lambda x: x + 1, [1, 2, 3])) == [2, 3, 4]


def test_map_bad_input(dview):
    with pytest.raises(TypeError, match="callable"):
        dview.map_sync(3, range(3))
    with pytest.raises(TypeError, match="sequence"):
        dview.map_sync(abs)


def test_parallel_and_remote_decorators(dview):
    @dview.parallel(block=True)
    def scaled(x):
        return [10 * v for v in x]

    assert scaled(range(8)) == [10 * v for v in range(8)]

    @dview.parallel(block=True)
    def one(x):
        return x + 1

    assert one.map(range(5)) == [1, 2, 3, 4, 5]

    @dview.remote(block=True)
    def where():
        import os

        return os.getpid()

    assert len(set(where())) == 4


# -- flags, results, the end -----------------------------------------------------------------
def test_queue_status(rc):
    status = rc.queue_status()
    assert set(status) >= {0, 1, 2, 3, "unassigned"}
    assert set(status[0]) >= {"queue", "completed", "tasks"}
    assert set(rc.queue_status(targets=[0, 1])) == {0, 1, "unassigned"}
    assert set(rc.queue_status(targets=0)) >= {"queue", "completed", "tasks"}


def test_history_results_and_metadata_are_kept(rc):
    ar = rc[0].apply_async(lambda: "kept")
    ar.get()
    msg = ar.msg_ids[0]
    assert rc.history[-1] == msg
    assert rc.results[msg] == "kept"
    assert rc.metadata[msg]["engine_id"] == 0
    assert rc.metadata[msg].status == "ok"
    assert msg not in rc.outstanding


def test_get_result_of_own_task_and_unknown_msg_ids(rc):
    ar = rc[0].apply_async(lambda: 99)
    assert rc.get_result(ar.msg_ids[0]).get() == 99
    assert rc.get_result(-1).get() == 99
    with pytest.raises(error.InvalidTaskID, match="no tasks"):
        rc.get_result(rc._msg_id(999999999))
    with pytest.raises(ValueError, match="not a msg_id"):
        rc.get_result("nonsense")
    assert rc[0].apply_sync(lambda: 1) == 1


def test_use_pickle_sends_by_reference(rc):
    view = rc[0]
    view.use_pickle()
    assert view.apply_sync(os.getpid) > 0
    view.use_cloudpickle()
    assert view.apply_sync(lambda: 1) == 1


def test_use_dill_without_dill_says_so(rc):
    try:
        import dill  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install dill"):
            rc[0].use_dill()
    else:
        view = rc[0]
        view.use_dill()
        assert view.apply_sync(lambda: 2) == 2


def test_the_client_as_a_context_manager_closes_it(cluster4):
    with cluster4.rc() as rc:
        assert rc[0].apply_sync(lambda: 1) == 1
    rc.close()  # closing again does nothing


def test_an_aborted_task_queued_on_its_engine_does_not_run(rc, tmp_path):
    from support.cluster import Gate

    gate = Gate(tmp_path)
    marker = tmp_path / "touched"

    def touch():
        open(str(marker), "w").close()

    view = rc[3]
    running = view.apply_async(gate.waiter())
    queued = view.apply_async(touch)  # behind it, in the same batch to the engine
    queued.wait_for_send()
    queued.abort()
    gate.open()
    assert running.get() == "go"
    with pytest.raises(error.TaskAborted):
        queued.get()
    assert view.apply_sync(lambda: 1) == 1  # the engine went on
    assert not marker.exists()


def test_client_options_of_ipyparallel_are_accepted_and_typos_refused(cluster4):
    with ipp.Client(cluster4.furl_file("client"), timeout=10, debug=False) as rc:
        assert rc.ids
    with pytest.raises(TypeError, match="unexpected arguments \\['profil'\\]"):
        ipp.Client(cluster4.furl_file("client"), profil="x")
    with ipp.Client(url_or_file=cluster4.furl_file("client")) as rc:
        assert rc.ids


def test_a_client_on_foolscap_alone_polls_for_its_results(cluster4, monkeypatch):
    """Where no channel opens (foolscap still works), results come by long poll,
    and asking the controller to push them there fails, saying why."""
    from twisted.internet import defer

    from plait.kernel.client import _base, _reactor

    monkeypatch.setattr(_base, "_with_channel", lambda ref, furl: defer.succeed((ref, None)))
    with cluster4.rc() as polled:
        polled.wait_for_engines(4, timeout=30)
        connection = polled._async
        assert not hasattr(connection._remote, "bind")  # foolscap, not a channel
        assert polled[0].apply_sync(pow, 2, 10) == 1024
        assert polled[:].apply_sync(os.getpid) != []
        with pytest.raises(RuntimeError, match="pushed on a channel only"):
            _reactor.call(connection._outcome, "push_results")
