"""The engine's interpreter, in-process: execute, namespace, apply, handle."""

from __future__ import annotations

import linecache
import pickle
import sys
import threading
import types

import cloudpickle
import pytest

from plait.kernel.engine.interpreter import Interpreter, get_interpreter
from plait.wire.errors import RemoteFailure
from plait.wire.serialize import deserialize


@pytest.fixture
def interp() -> Interpreter:
    return Interpreter(0)


def client_function(source: str, name: str, **client_globals):
    """A function as it arrives from a client's ``__main__``: shipped by cloudpickle."""
    namespace = {"__name__": "__main__", **client_globals}
    exec(source, namespace)
    function = namespace[name]
    assert function.__module__ == "__main__"
    return pickle.loads(cloudpickle.dumps(function))


def reply(interp: Interpreter, method: str, *args):
    ok, payload = interp.handle(method, *args)
    assert isinstance(payload, bytes)
    return ok, deserialize(payload)


# -- execute -------------------------------------------------------------------


def test_execute_returns_the_result_dict_and_numbers_commands(interp):
    assert interp.execute("a=5") == {
        "id": 0, "number": 1, "input": {"raw": "a=5", "translated": "a=5"},
        "stdout": "", "stderr": "",
    }
    result = interp.execute("d=10; print(d)")
    assert result["number"] == 2
    assert result["stdout"] == "10\n"


def test_namespace_persists_and_is_main(interp):
    interp.execute("a = 5")
    interp.execute("b = 10")
    assert interp.execute("print(a + b, __name__)")["stdout"] == "15 __main__\n"


def test_stdout_and_stderr_are_captured_and_restored(interp):
    before = sys.stdout, sys.stderr
    result = interp.execute(
        "import sys\nsys.stdout.write('out')\nprint('err', file=sys.stderr)"
    )
    assert (result["stdout"], result["stderr"]) == ("out", "err\n")
    assert (sys.stdout, sys.stderr) == before


def test_output_of_threads_during_the_command_is_captured(interp):
    result = interp.execute(
        "import threading\n"
        "t = threading.Thread(target=print, args=('from a thread',))\n"
        "t.start(); t.join()"
    )
    assert result["stdout"] == "from a thread\n"


def test_last_expression_is_shown_unless_none(interp):
    assert interp.execute("x = [1, 2]\nx")["stdout"] == "[1, 2]\n"
    assert interp.execute("x.append(3)")["stdout"] == ""
    assert interp.execute("'%d' % len(x)")["stdout"] == "'3'\n"


def test_indented_source_is_dedented(interp):
    result = interp.execute("    a = 1\n    b = a + 1\n")
    assert result["input"] == {"raw": "    a = 1\n    b = a + 1\n", "translated": "a = 1\nb = a + 1\n"}
    assert interp.pull(["b"]) == [2]


def test_a_failing_command_raises_with_its_output_attached(interp):
    before = sys.stdout
    with pytest.raises(ZeroDivisionError) as info:
        interp.execute("print('before')\n1/0")
    attached = info.value.plait_result
    assert attached["number"] == 1
    assert attached["stdout"] == "before\n"
    assert info.traceback[-1].path == "<In [1]>"
    assert sys.stdout is before
    # the failed command counts, and is in the history
    assert interp.execute("pass")["number"] == 2
    assert interp.get_result(1)["stdout"] == "before\n"


def test_a_syntax_error_names_the_line(interp):
    interp.execute("a = 1")
    with pytest.raises(SyntaxError) as info:
        interp.execute("b = 2\nc = = 3")
    assert info.value.lineno == 2
    assert "line 2" in str(info.value)
    assert interp.get_result()["number"] == 2


def test_tracebacks_show_the_source_of_earlier_commands(interp):
    interp.execute("def f(x):\n    return x / 0")
    ok, failure = reply(interp, "execute", "f(1)")
    assert not ok
    assert '  File "<In [2]>", line 1, in <module>\n    f(1)\n' in failure.traceback
    assert '  File "<In [1]>", line 2, in f\n    return x / 0\n' in failure.traceback


def test_execute_under_a_file_name(interp):
    with pytest.raises(KeyError) as info:
        interp.execute("a = 1\n{}['k']", filename="/home/me/script.py")
    assert info.traceback[-1].path == "/home/me/script.py"
    assert info.traceback[-1].lineno == 1  # pytest counts from 0


def test_execute_refuses_non_text(interp):
    with pytest.raises(TypeError, match="execute needs Python source as a str, not a bytes"):
        interp.execute(b"a = 1")


def test_output_is_cut_at_the_limit():
    interp = Interpreter(0, output_limit=10)
    out = interp.execute("print('x' * 25)")["stdout"]
    assert out.startswith("x" * 10 + "\n[plait: output cut, 16 more characters were dropped]")


def test_output_past_the_cut_costs_no_memory():
    interp = Interpreter(0, output_limit=10)
    result = interp.execute(
        "import sys\n"
        "print('x' * 25)\n"
        "for _ in range(200_000): print('')\n"
        "parts = len(sys.stdout._parts)")
    assert interp.pull("parts") <= 3  # not one kept piece per print past the cut
    assert "200016 more characters were dropped" in result["stdout"]  # 16 + 200,000 newlines


def test_user_code_runs_as_main_so_pickle_finds_its_classes(interp):
    saved = sys.modules["__main__"]
    result = interp.execute(
        "import pickle, sys\n"
        "class Point:\n    pass\n"
        "print(sys.modules['__main__'] is not None and type(pickle.loads(pickle.dumps(Point()))).__name__)"
    )
    assert result["stdout"] == "Point\n"
    assert sys.modules["__main__"] is saved


# -- get_result --------------------------------------------------------------


def test_get_result_last_and_by_number(interp):
    interp.execute("print(1)")
    interp.execute("print(2)")
    assert interp.get_result()["stdout"] == "2\n"
    assert interp.get_result(1)["stdout"] == "1\n"
    interp.get_result(1)["stdout"] = "changed"
    assert interp.get_result(1)["stdout"] == "1\n"  # a copy


def test_get_result_errors_say_what_exists(interp):
    with pytest.raises(IndexError, match="engine 0 has not executed any command yet"):
        interp.get_result()
    interp.execute("a = 1")
    with pytest.raises(IndexError, match="engine 0 has no command number 5: its commands are numbered 1 to 1"):
        interp.get_result(5)
    with pytest.raises(IndexError, match="no command number 0"):
        interp.get_result(0)


def test_old_results_are_dropped_beyond_the_history_limit():
    interp = Interpreter(3, history_limit=2)
    for i in range(4):
        interp.execute(f"x = {i}")
    assert interp.get_result(4)["input"]["raw"] == "x = 3"
    with pytest.raises(IndexError, match=r"command 1 is no longer kept on engine 3: only the last 2 are \(commands 3 to 4\)"):
        interp.get_result(1)
    assert "<In [1]>" not in linecache.cache and "<In [4]>" in linecache.cache


# -- push, pull, keys, reset -------------------------------------------------------


def test_push_pull_keys_reset(interp):
    assert interp.push({"a": 1.03234, "b": 3453}) is None
    assert interp.pull(["a", "b"]) == [1.03234, 3453]
    assert interp.pull("b") == 3453
    interp.execute("import os\n_private = 1")
    assert interp.keys() == ["_private", "a", "b", "os"]
    interp.reset()
    assert interp.keys() == []
    assert interp.execute("print(__name__)")["stdout"] == "__main__\n"


def test_pull_of_a_missing_name_names_it_and_the_engine(interp):
    interp.push({"a": 1})
    with pytest.raises(NameError, match="name 'zz' is not defined on engine 0") as info:
        interp.pull(["a", "zz"])
    assert info.value.name == "zz"


@pytest.mark.parametrize(
    "namespace, message",
    [
        ({"a b": 1}, "cannot push 'a b': names must be Python identifiers"),
        ({1: 1}, "cannot push 1: names must be Python identifiers"),
        ({"__builtins__": {}}, "cannot push '__builtins__'"),
    ],
)
def test_push_refuses_bad_names(interp, namespace, message):
    with pytest.raises(ValueError, match=message):
        interp.push(namespace)


def test_push_needs_a_dict(interp):
    with pytest.raises(TypeError, match="push needs a dict of names to values, not a list"):
        interp.push([("a", 1)])


# -- interactively defined functions ----------------------------------------------


def test_a_pushed_function_runs_in_the_engine_namespace(interp):
    f = client_function("def f(x):\n    return 2.0 * x ** 4 + offset", "f")
    interp.push({"f": f, "offset": 1})
    interp.execute("y = f(4.0)")
    assert interp.pull("y") == 513.0


def test_a_pushed_function_brings_the_helpers_the_engine_lacks(interp):
    f = client_function(
        "import math\ndef helper(x):\n    return math.sqrt(x)\n"
        "def f(x):\n    return helper(x) + scale",
        "f", scale=1,
    )
    interp.push({"scale": 10, "f": f})  # the engine's scale wins over the client's
    assert interp.execute("f(16)")["stdout"] == "14.0\n"
    assert "helper" in interp.keys()


def test_apply_sees_engine_names_and_borrows_carried_ones(interp):
    interp.push({"a": 100})
    f = client_function("def g(x):\n    return x * 2\ndef f(x):\n    return g(x) + a", "f", a=1)
    assert interp.apply(f, (1,), {}) == 102
    assert interp.keys() == ["a"]  # g was only borrowed for the call


def test_recursive_functions_find_themselves(interp):
    fact = client_function("def fact(n):\n    return 1 if n < 2 else n * fact(n - 1)", "fact")
    assert interp.apply(fact, (5,)) == 120
    interp.push({"fact": fact})
    assert interp.execute("fact(6)")["stdout"] == "720\n"


def test_apply_global_assignment_reaches_the_namespace(interp):
    setup = client_function("def setup(n):\n    global data\n    data = list(range(n))", "setup")
    interp.apply(setup, (3,), None)
    assert interp.pull("data") == [0, 1, 2]


def test_apply_rebinds_functions_passed_as_arguments(interp):
    interp.push({"k": 3})
    f = client_function("def f(x):\n    return x * k", "f")
    assert interp.apply(lambda xs, fn: [fn(x) for x in xs], ([1, 2],), {"fn": f}) == [3, 6]
    assert interp.apply(lambda fn, xs: [fn(x) for x in xs], (f, [1])) == [3]


def test_apply_with_kwargs_and_a_non_callable(interp):
    assert interp.apply(pow, (2, 10)) == 1024
    assert interp.apply(int, ("ff",), {"base": 16}) == 255
    assert interp.apply_call((sorted, ([3, 1, 2],), {"reverse": True})) == [3, 2, 1]
    with pytest.raises(TypeError, match="apply needs a callable, not a int"):
        interp.apply(5, (), {})


# -- properties ---------------------------------------------------------------------


def test_properties_changes_are_taken_once(interp):
    interp = Interpreter(0, properties={"RAM": 4})
    assert interp.take_changed_properties() is None  # registered with these
    interp.execute(
        "from plait.kernel.engine.interpreter import get_interpreter\n"
        "get_interpreter().properties['RAM'] = 8"
    )
    assert interp.take_changed_properties() == {"RAM": 8}
    assert interp.take_changed_properties() is None
    assert interp.take_changed_properties(force=True) == {"RAM": 8}
    interp.properties["tags"] = []
    interp.take_changed_properties()
    interp.properties["tags"].append("gpu")  # a change inside a value
    assert interp.take_changed_properties() == {"RAM": 8, "tags": ["gpu"]}


def test_unserializable_properties_are_held_back_with_a_reason(interp):
    interp.properties["lock"] = threading.Lock()
    assert interp.take_changed_properties() is None
    assert "the properties of engine 0 cannot be sent" in interp.properties_error
    del interp.properties["lock"]
    interp.take_changed_properties()
    assert interp.properties_error is None


def test_get_interpreter_is_the_one_running(interp):
    other = Interpreter(1)
    other.execute("from plait.kernel.engine.interpreter import get_interpreter as g\nme = g().engine_id")
    assert other.pull("me") == 1
    assert get_interpreter() is other


# -- handle ----------------------------------------------------------------------


def test_handle_returns_serialized_values(interp):
    assert reply(interp, "push", {"a": 5}) == (True, None)
    assert reply(interp, "pull", ["a"]) == (True, [5])
    ok, result = reply(interp, "execute", "print(a)")
    assert ok and result["stdout"] == "5\n"
    assert reply(interp, "get_result", None) == (True, result)
    assert reply(interp, "keys") == (True, ["a"])
    assert reply(interp, "apply_call", (max, (1, 2), {})) == (True, 2)
    assert reply(interp, "apply", max, (3, 4), {}) == (True, 4)
    assert reply(interp, "reset") == (True, None)


def test_handle_reports_a_user_error_with_its_output(interp):
    ok, failure = reply(interp, "execute", "print('partial')\n1/0")
    assert not ok and isinstance(failure, RemoteFailure)
    assert (failure.ename, failure.evalue) == ("ZeroDivisionError", "division by zero")
    assert (failure.engine_id, failure.method) == (0, "execute")
    assert failure.extra["result"]["stdout"] == "partial\n"
    assert failure.traceback == (
        "Traceback (most recent call last):\n"
        '  File "<In [1]>", line 2, in <module>\n'
        "    1/0\n"
        + ("     ~^~\n" if sys.version_info >= (3, 11) else "")
        + "ZeroDivisionError: division by zero\n"
    )
    exc = failure.exception()
    assert isinstance(exc, ZeroDivisionError) and not hasattr(exc, "plait_result")


def test_handle_reports_a_syntax_error_with_the_line(interp):
    ok, failure = reply(interp, "execute", "a = = 1")
    assert not ok and failure.ename == "SyntaxError"
    assert failure.evalue == "invalid syntax (<In [1]>, line 1)"
    assert '  File "<In [1]>", line 1\n    a = = 1\n' in failure.traceback


def test_handle_traceback_of_engine_side_errors_has_no_plait_frames(interp):
    ok, failure = reply(interp, "pull", ["nothere"])
    assert not ok
    assert failure.traceback == "NameError: name 'nothere' is not defined on engine 0\n"


def test_handle_names_the_value_that_cannot_be_sent(interp):
    interp.execute("import threading\nlock = threading.Lock()\nx = 1")
    ok, failure = reply(interp, "pull", ["x", "lock"])
    assert not ok and failure.ename == "SerializationError"
    assert failure.evalue.startswith("the value of 'lock' on engine 0 cannot be sent: could not serialize")


def test_handle_unknown_command_and_bad_arguments(interp):
    ok, failure = reply(interp, "frobnicate")
    assert not ok and failure.ename == "ValueError"
    assert failure.evalue.startswith("unknown engine command 'frobnicate' (known: execute, push")
    ok, failure = reply(interp, "pull")
    assert not ok and failure.ename == "TypeError"


def test_handle_survives_exit_and_unpicklable_or_unprintable_exceptions(interp):
    ok, failure = reply(interp, "execute", "import sys; sys.exit(3)")
    assert not ok and failure.ename == "SystemExit"
    ok, failure = reply(
        interp, "execute",
        "import threading\n"
        "class Odd(Exception):\n"
        "    def __init__(self):\n"
        "        super().__init__('odd'); self.lock = threading.Lock()\n"
        "    def __str__(self):\n"
        "        raise RuntimeError('no')\n"
        "raise Odd()",
    )
    assert not ok and failure.exc is None and failure.ename == "Odd"
    assert failure.evalue == "<unprintable Odd object: RuntimeError in __str__>"
    assert reply(interp, "execute", "print('still alive')")[1]["stdout"] == "still alive\n"


def test_handle_run_task_delegates_to_the_task_runner(interp):
    # what the task runner accepts is tested in test_taskrun.py; here, that
    # handle hands run_task over to it and reports its refusal as a failure
    ok, failure = reply(interp, "run_task", types.SimpleNamespace(kind="string"))
    assert not ok and failure.ename == "SerializationError"
    assert "not a task payload: SimpleNamespace" in failure.evalue
