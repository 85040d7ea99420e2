"""RemoteFailure, RemoteError and CompositeError as a user meets them."""

from __future__ import annotations

import pickle
import sys
import threading

import cloudpickle
import pytest

from plait.kernel.engine.interpreter import Interpreter
from plait.wire.errors import (
    CompositeError,
    PlaitError,
    RemoteError,
    RemoteException,
    RemoteFailure,
    collect_results,
)
from plait.wire.serialize import deserialize


def engine_failure(engine_id: int, code: str = "1/0") -> RemoteFailure:
    """The failure an engine reports for ``code``."""
    ok, payload = Interpreter(engine_id).handle("execute", code)
    assert not ok
    return deserialize(payload)


@pytest.fixture
def composite() -> CompositeError:
    return CompositeError(
        "execute", [(0, engine_failure(0)), (1, engine_failure(1))], {2: "fine"}
    )


DIVISION = (
    "Traceback (most recent call last):\n"
    '  File "<In [1]>", line 1, in <module>\n'
    "    1/0\n"
    + ("     ~^~\n" if sys.version_info >= (3, 11) else "")
    + "ZeroDivisionError: division by zero"
)


def test_composite_error_message(composite):
    assert str(composite) == (
        "one or more exceptions from call to method: execute\n"
        "[0:execute]: ZeroDivisionError: division by zero\n"
        "[1:execute]: ZeroDivisionError: division by zero"
    )
    assert isinstance(composite, RemoteError) and isinstance(composite, PlaitError)


def test_composite_error_keeps_failures_and_results(composite):
    assert [(eid, method) for eid, method, _ in composite.elist] == [(0, "execute"), (1, "execute")]
    assert composite[1] == composite.elist[1]
    assert composite[1][2].ename == "ZeroDivisionError"
    assert len(composite) == 2
    assert composite.results == {2: "fine"}


def test_raise_exception_raises_the_original(composite):
    with pytest.raises(ZeroDivisionError, match="^division by zero") as info:
        composite.raise_exception()
    assert str(info.value) == "division by zero"
    if sys.version_info >= (3, 11):
        assert info.value.__notes__ == [f"[0:execute] remote traceback:\n{DIVISION}"]
    assert info.value.__suppress_context__
    with pytest.raises(ZeroDivisionError):
        composite.raise_exception(1)


def test_raise_exception_with_a_bad_index(composite):
    with pytest.raises(
        IndexError,
        match=r"an exception with index 5 does not exist: this CompositeError holds 2 \(indices 0 to 1\)",
    ):
        composite.raise_exception(5)
    with pytest.raises(IndexError, match="index 'a' does not exist"):
        composite["a"]


def test_print_tracebacks(composite, capsys):
    composite.print_tracebacks()
    assert capsys.readouterr().out == (
        f"[0:execute]:\n{DIVISION}\n\n[1:execute]:\n{DIVISION}\n\n"
    )
    composite.print_tracebacks(1)
    assert capsys.readouterr().out == f"[1:execute]:\n{DIVISION}\n\n"
    with pytest.raises(IndexError):
        composite.print_tracebacks(2)


@pytest.mark.parametrize("dumps", [pickle.dumps, cloudpickle.dumps])
def test_composite_error_pickles(composite, dumps):
    copy = pickle.loads(dumps(composite))
    assert type(copy) is CompositeError
    assert str(copy) == str(composite)
    assert copy.results == {2: "fine"}
    assert copy.elist == composite.elist
    with pytest.raises(ZeroDivisionError):
        copy.raise_exception()


def test_failure_method_and_missing_engine_id_in_labels():
    failure = RemoteFailure("KeyError", "'a'", "", method="pull")
    error = CompositeError("execute", [(None, failure)])
    assert str(error).splitlines()[1] == "[?:pull]: KeyError: 'a'"


def test_collect_results():
    assert collect_results("pull", [(0, True, 1), (1, True, 2)]) == [1, 2]
    failure = engine_failure(1)
    with pytest.raises(CompositeError) as info:
        collect_results("execute", [(0, True, "ok"), (1, False, failure), (2, True, "ok2")])
    assert info.value.results == {0: "ok", 2: "ok2"}
    assert [eid for eid, _, _ in info.value.elist] == [1]


def test_remote_error_of_one_engine(capsys):
    error = RemoteError(engine_failure(3))
    assert str(error) == "[3:execute]: ZeroDivisionError: division by zero"
    assert (error.engine_id, error.ename) == (3, "ZeroDivisionError")
    copy = pickle.loads(pickle.dumps(error))
    assert str(copy) == str(error)
    copy.print_traceback()
    assert capsys.readouterr().out == f"[3:execute]:\n{DIVISION}\n"
    with pytest.raises(ZeroDivisionError):
        copy.raise_exception()


def test_remote_failure_of_an_unpicklable_exception_stands_in():
    class Unpicklable(Exception):
        def __init__(self):
            super().__init__("cannot travel")
            self.lock = threading.Lock()

    failure = RemoteFailure.from_exception(Unpicklable(), 0, "apply")
    assert failure.exc is None
    exc = failure.exception()
    assert isinstance(exc, RemoteException)
    assert str(exc) == "Unpicklable: cannot travel"
    copy = pickle.loads(pickle.dumps(exc))
    assert (copy.ename, copy.evalue) == ("Unpicklable", "cannot travel")


def test_remote_failure_traceback_choices():
    try:
        raise KeyError("k")
    except KeyError as exc:
        whole = RemoteFailure.from_exception(exc)
        bare = RemoteFailure.from_exception(exc, tb=None, extra={"note": 1})
    assert whole.traceback.startswith("Traceback (most recent call last):\n")
    assert bare.traceback == "KeyError: 'k'\n"
    assert bare.extra == {"note": 1}
    assert str(bare) == "KeyError: 'k'"
