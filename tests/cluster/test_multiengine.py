"""The MultiEngine client against a real 4-engine cluster: code, namespaces, errors.

The examples follow the user guide (kernel-multiengine.rst) in Python 3.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest

from plait.kernel import client

GATE = "import os, time\nwhile not os.path.exists({path!r}): time.sleep(0.005)"


def test_get_ids_and_len(mec):
    assert mec.get_ids() == [0, 1, 2, 3]
    assert len(mec) == 4
    assert mec  # true even though it has a length


def test_default_furl_comes_from_the_profile(cluster4, monkeypatch):
    monkeypatch.setenv("PLAIT_DIR", str(cluster4.plait_dir))
    assert client.MultiEngineClient().get_ids() == [0, 1, 2, 3]


def test_execute_displays_as_in_the_guide(mec):
    first = mec.execute("a=5")
    n = first[0]["number"]
    assert repr(first) == "\n".join(
        ["<Results List>"] + [f"[{i}] In [{n}]: a=5" for i in range(4)]
    )
    mec.execute("b=10")
    assert repr(mec.execute("c=a+b", targets=[0, 2])) == (
        f"<Results List>\n[0] In [{n + 2}]: c=a+b\n[2] In [{n + 2}]: c=a+b"
    )
    mec.execute("c=a-b", targets=[1, 3])
    shown = repr(mec.execute("print(c)"))
    assert shown == "\n".join([
        "<Results List>",
        f"[0] In [{n + 3}]: print(c)", f"[0] Out[{n + 3}]: 15", "",
        f"[1] In [{n + 3}]: print(c)", f"[1] Out[{n + 3}]: -5", "",
        f"[2] In [{n + 3}]: print(c)", f"[2] Out[{n + 3}]: 15", "",
        f"[3] In [{n + 3}]: print(c)", f"[3] Out[{n + 3}]: -5",
    ])


def test_execute_returns_result_dicts(mec):
    results = mec.execute("d=10; print(d)")
    assert [r["id"] for r in results] == [0, 1, 2, 3]
    for r in results:
        assert r["input"] == {"raw": "d=10; print(d)", "translated": "d=10; print(d)"}
        assert r["stdout"] == "10\n"
        assert r["stderr"] == ""
        assert isinstance(r["number"], int)


def test_targets_and_block_attributes_are_defaults(mec):
    assert mec.targets == "all" and mec.block is True
    mec.targets = [0, 2]
    mec.block = False
    pr = mec.execute("a=5")
    assert isinstance(pr, client.PendingResult)
    assert [r["id"] for r in pr.r] == [0, 2]
    mec.targets = "all"
    mec.block = True
    assert [r["id"] for r in mec.execute("b=10; print(b)")] == [0, 1, 2, 3]
    assert [r["id"] for r in mec.execute("b=1", targets=3)] == [3]
    assert mec.pull("b", targets=[3, 1]) == [1, 10]


def test_unknown_engine_id_names_it_and_the_valid_ones(mec):
    with pytest.raises(client.InvalidEngineID) as info:
        mec.execute("x = 1", targets=[0, 7])
    assert str(info.value) == "no engine with id 7; registered engines: [0, 1, 2, 3]"
    with pytest.raises(client.InvalidEngineID, match="no engine with id 9"):
        mec.push({"x": 1}, targets=9)
    assert mec.keys() == [[], [], [], []]  # nothing ran anywhere


def test_bad_targets_type(mec):
    with pytest.raises(TypeError, match="targets must be 'all', an int or a list of ints"):
        mec.execute("x = 1", targets="some")


def test_non_blocking_execute_and_polling(mec, tmp_path):
    gate = tmp_path / "gate"
    pr = mec.execute(GATE.format(path=str(gate)), block=False)
    assert pr.get_result(block=False) is None
    assert pr.get_result("not yet", block=False) == "not yet"
    gate.touch()
    result = pr.get_result()
    assert [r["id"] for r in result] == [0, 1, 2, 3]
    assert pr.r is result or pr.r == result


def test_barrier_waits_for_every_pending_result(mec):
    mec.block = False
    prs = [mec.execute(f"i = {k}") for k in range(10)]
    failing = mec.execute("1/0")
    assert mec.barrier([*prs, failing]) is None  # traps the failure
    assert prs[-1].ready() and failing.ready()
    assert [r["input"]["raw"] for r in prs[3].r] == ["i = 3"] * 4
    with pytest.raises(client.CompositeError):
        failing.get_result()
    mec.block = True
    assert mec.pull("i") == [9, 9, 9, 9]


def test_push_and_pull_as_in_the_guide(mec):
    assert mec.push(dict(a=1.03234, b=3453)) == [None, None, None, None]
    assert mec.pull("a") == [1.03234] * 4
    assert mec.pull("b", targets=0) == [3453]
    assert mec.pull(("a", "b")) == [[1.03234, 3453]] * 4
    assert mec.zip_pull(("a", "b")) == [(1.03234,) * 4, (3453,) * 4]
    mec.push(dict(c="speed"))
    assert [r["stdout"] for r in mec.execute("print(c)")] == ["speed\n"] * 4
    mec.block = False
    assert mec.pull("a").r == [1.03234] * 4


def test_dictionary_interface(mec):
    mec["a"] = ["foo", "bar"]
    assert mec["a"] == [["foo", "bar"]] * 4
    with pytest.raises(TypeError, match="names are str"):
        mec[0]
    with pytest.raises(TypeError, match="not iterable"):
        iter(mec)


def test_push_function_and_closures(mec):
    def f(x):
        return 2.0 * x**4

    assert mec.push_function(dict(f=f)) == [None] * 4
    mec.execute("y = f(4.0)")
    assert mec.pull("y") == [512.0] * 4

    scale = 3

    def make(k):
        def times(x):
            return x * k * scale

        return times

    mec.push_function({"times": make(2)})
    mec.execute("z = times(7)")
    assert mec.pull("z") == [42] * 4
    with pytest.raises(TypeError, match="not callable: {'n': 'int'}"):
        mec.push_function({"n": 5})


def test_pull_function(mec):
    mec.execute("base = 100\ndef g(x):\n    return x + base\n")
    functions = mec.pull_function("g")
    assert len(functions) == 4 and functions[0](1) == 101
    g, = mec.pull_function(["g"], targets=1)[0]
    assert g(2) == 102
    with pytest.raises(TypeError, match="'base' on engine 0 is a int, not a function"):
        mec.pull_function("base")


def test_serialized_values_move_between_engines_without_unpickling(mec):
    mec.execute(
        "class Point:\n    def __init__(self, x):\n        self.x = x\np = Point(4)\n",
        targets=0,
    )
    blob, = mec.pull_serialized("p", targets=0)
    assert isinstance(blob, client.Serialized) and blob.nbytes > 0
    assert mec.push_serialized({"q": blob}, targets=[1, 2]) == [None, None]
    assert mec.execute("print(type(q).__name__, q.x)", targets=[1, 2])[1]["stdout"] == "Point 4\n"
    rows = mec.pull_serialized(["p", "p"], targets=0)
    assert len(rows) == 1 and rows[0][0] == blob
    with pytest.raises(TypeError, match="pushes Serialized values"):
        mec.push_serialized({"q": 1})


def test_unpicklable_values_say_what_could_not_be_pickled(mec):
    with pytest.raises(client.SerializationError) as info:
        mec.push({"ok": 1, "lock": threading.Lock()})
    assert "push: cannot send 'lock'" in str(info.value)
    assert "cannot pickle '_thread.lock' object" in str(info.value)
    assert mec.keys() == [[], [], [], []]  # nothing was pushed
    mec.execute("import threading; l = threading.Lock()", targets=0)
    with pytest.raises(client.CompositeError, match=r"\[0:pull\]: SerializationError: .*lock"):
        mec.pull("l", targets=0)
    with pytest.raises(client.CompositeError, match="'l' cannot be sent"):
        mec.pull_serialized("l", targets=0)
    assert mec.execute("still = 'fine'", targets=0)[0]["number"] > 0


def test_syntax_error_breaks_nothing(mec):
    with pytest.raises(client.CompositeError) as info:
        mec.execute("a = ")
    message = str(info.value)
    assert message.startswith("one or more exceptions from call to method: execute\n")
    assert re.search(r"\[3:execute\]: SyntaxError: invalid syntax", message)
    with pytest.raises(SyntaxError):
        info.value.raise_exception()
    assert mec.execute("a = 1") and mec.pull("a") == [1] * 4


def test_missing_names_fail_per_engine(mec):
    mec.push({"here": 1}, targets=[0, 1])
    with pytest.raises(client.CompositeError) as info:
        mec.pull("here")
    error = info.value
    assert [engine for engine, _, _ in error.elist] == [2, 3]
    assert "[2:pull]: NameError: name 'here' is not defined on engine 2" in str(error)
    assert error.results == {0: [1], 1: [1]}


def test_composite_error_keeps_the_successful_results(mec):
    mec.scatter("d", [0, 1, 2, 4], flatten=True)
    with pytest.raises(client.CompositeError) as info:
        mec.execute("r = 8 // d")
    error = info.value
    assert len(error.elist) == 1 and error.elist[0][0] == 0
    assert str(error) == (
        "one or more exceptions from call to method: execute\n"
        "[0:execute]: ZeroDivisionError: integer division or modulo by zero"
    )
    assert sorted(error.results) == [1, 2, 3]
    assert mec.pull("r", targets=[1, 2, 3]) == [8, 4, 2]


def test_composite_error_reraises_and_prints(mec, capsys):
    with pytest.raises(client.CompositeError) as info:
        mec.execute("1/0")
    error = info.value
    assert str(error).splitlines()[1:] == [
        f"[{i}:execute]: ZeroDivisionError: division by zero" for i in range(4)
    ]
    with pytest.raises(ZeroDivisionError, match="division by zero"):
        error.raise_exception()
    with pytest.raises(ZeroDivisionError):
        error.raise_exception(excid=3)
    with pytest.raises(IndexError):
        error.raise_exception(excid=4)
    error.print_tracebacks()
    out = capsys.readouterr().out
    assert out.count("ZeroDivisionError: division by zero") == 4
    assert "[2:execute]:" in out and "1/0" in out


def test_composite_error_from_non_blocking_results(mec):
    pr = mec.execute("1/0", block=False)
    for _ in range(2):  # raised again on every call
        with pytest.raises(client.CompositeError, match=r"\[1:execute\]: ZeroDivisionError"):
            pr.get_result()
    with pytest.raises(client.CompositeError):
        pr.get_result(block=True)


def test_get_result_keys_and_reset(mec):
    done = mec.execute("k = 1; print(k)")
    numbers = [r["number"] for r in done]
    assert mec.get_result() == done
    assert [r["number"] for r in mec.get_result(numbers[0], targets=0)] == [numbers[0]]
    assert isinstance(mec.get_result(), client.ResultList)
    assert mec.keys() == [["k"]] * 4
    assert mec.reset() == [None] * 4
    assert mec.keys() == [[]] * 4
    with pytest.raises(client.CompositeError, match="has no command number 999999"):
        mec.get_result(999999)


def test_run_a_file(mec, tmp_path):
    script = tmp_path / "job.py"
    script.write_text(
        "total = sum(range(5))\nprint(total)\n\ndef boom():\n    raise ValueError('from the file')\n"
    )
    results = mec.run(str(script))
    assert [r["stdout"] for r in results] == ["10\n"] * 4
    assert mec.pull("total") == [10] * 4
    with pytest.raises(client.CompositeError) as info:
        mec.execute("boom()", targets=2)
    assert "[2:execute]: ValueError: from the file" in str(info.value)
    assert str(script) in info.value.elist[0][2].traceback
    pr = mec.run(script, targets=1, block=False)
    assert pr.r[0]["stdout"] == "10\n"


def test_run_refuses_missing_files_and_bad_syntax_locally(mec, tmp_path):
    with pytest.raises(FileNotFoundError, match="run: there is no file .*nowhere.py"):
        mec.run(str(tmp_path / "nowhere.py"))
    bad = tmp_path / "bad.py"
    bad.write_text("x = (\n")
    with pytest.raises(SyntaxError, match="never closed"):
        mec.run(bad)
    assert mec.keys() == [[]] * 4


def test_with_block_runs_its_body_on_the_engines(mec):
    where = "here"
    with mec:
        client.remote()
        where = "on the engines"
        text = """
a string with a line
flush left"""  # noqa: F841 (the body runs on the engines only)
        for i in range(3):
            last = i  # noqa: F841
    assert where == "here"
    assert mec.pull("where") == ["on the engines"] * 4
    assert mec.pull("last") == [2] * 4
    assert mec.pull("text")[0] == "\na string with a line\nflush left"
    assert isinstance(mec.with_context_result, client.ResultList)


def test_with_block_needs_remote_first(mec):
    ran = []
    with pytest.raises(ValueError, match="must start with a remote"):
        with mec:
            ran.append(1)
    assert ran == [] and mec.keys() == [[]] * 4


def test_with_block_body_on_the_with_line_is_refused(mec):
    with pytest.raises(ValueError, match="must start on a line of its own"):
        with mec: client.remote(); x = 1  # noqa: E701, E702, F841
    assert mec.keys() == [[]] * 4


def test_remote_outside_a_with_block_raises():
    with pytest.raises(client.StopLocalExecution, match="belongs first in the body"):
        client.remote()


def test_strip_whitespace():
    body = [
        "    # setting up\n",
        "    client.remote()\n",
        "    a = 1\n",
        "    if a:\n",
        "        b = '''x\n",
        "  y'''\n",
        "\n",
        "print('after the block')\n",
    ]
    assert client.strip_whitespace(body) == "a = 1\nif a:\n    b = '''x\n  y'''\n"
    assert client.strip_whitespace("remote()\n") == ""
    with pytest.raises(ValueError, match="must start with a remote"):
        client.strip_whitespace("    a = 1\n    remote()\n")


def test_wrap_result_list():
    wrapped = client.wrap_result_list([{"id": 0, "number": 1, "input": {"raw": "a"}}])
    assert isinstance(wrapped, client.ResultList) and repr(wrapped).endswith("[0] In [1]: a")
    assert client.wrap_result_list(5) == 5


def test_reference_interfaces_are_provided():
    from zope.interface.verify import verifyClass

    assert verifyClass(client.IFullBlockingMultiEngineClient, client.MultiEngineClient)
    assert verifyClass(client.IPendingResult, client.PendingResult)
    assert client.FullBlockingMultiEngineClient is client.MultiEngineClient


def test_explicit_furl_file_argument(cluster4):
    furl = Path(cluster4.furl_file("mec"))
    assert client.MultiEngineClient(str(furl)).get_ids() == [0, 1, 2, 3]
    assert client.MultiEngineClient(furl.read_text().strip()).get_ids() == [0, 1, 2, 3]
