"""The ``<Results List>`` and ``<Queue Status List>`` displays."""

from __future__ import annotations

import textwrap

from IPython.lib.pretty import pretty

from plait.kernel.client import QueueStatusList, ResultList
from plait.kernel.engine.interpreter import Interpreter
from plait.wire.errors import RemoteFailure


def result(engine_id: int, number: int, code: str, stdout: str = "", stderr: str = "") -> dict:
    return {
        "id": engine_id, "number": number, "input": {"raw": code, "translated": code},
        "stdout": stdout, "stderr": stderr,
    }


def expected(text: str) -> str:
    return textwrap.dedent(text).strip("\n")


def test_commands_without_output_show_only_in_lines():
    results = ResultList(result(i, 1, "a=5") for i in range(4))
    assert repr(results) == expected("""
        <Results List>
        [0] In [1]: a=5
        [1] In [1]: a=5
        [2] In [1]: a=5
        [3] In [1]: a=5
    """)


def test_output_is_shown_as_in_the_user_guide():
    results = ResultList(
        result(i, 4, "print(c)", "15\n" if i % 2 == 0 else "-5\n") for i in range(4)
    )
    assert repr(results) == expected("""
        <Results List>
        [0] In [4]: print(c)
        [0] Out[4]: 15

        [1] In [4]: print(c)
        [1] Out[4]: -5

        [2] In [4]: print(c)
        [2] Out[4]: 15

        [3] In [4]: print(c)
        [3] Out[4]: -5
    """)


def test_results_of_a_real_interpreter_display():
    engines = [Interpreter(i) for i in range(2)]
    for i, engine in enumerate(engines):
        engine.execute("a=5")
        engine.execute(f"b={10 * (i + 1)}; print(b)")
    assert repr(ResultList(e.get_result() for e in engines)) == expected("""
        <Results List>
        [0] In [2]: b=10; print(b)
        [0] Out[2]: 10

        [1] In [2]: b=20; print(b)
        [1] Out[2]: 20
    """)


def test_stderr_and_mixed_entries():
    results = ResultList([
        result(0, 7, "import warnings", ""),
        result(1, 6, "f()", "done\n", "warning: slow\n"),
        result(2, 7, "x = 1"),
    ])
    assert repr(results) == expected("""
        <Results List>
        [0] In [7]: import warnings
        [1] In [6]: f()
        [1] Out[6]: done
        [1] Err[6]: warning: slow

        [2] In [7]: x = 1
    """)


def test_multi_line_input_and_output_are_aligned():
    code = "for i in range(3):\n    print(i)\n"
    results = ResultList([result(0, 12, code, "0\n1\n\n2\n")])
    assert repr(results) == expected("""
        <Results List>
        [0] In [12]: for i in range(3):
        [0]     ...:     print(i)
        [0] Out[12]: 0
        [0]          1
        [0]
        [0]          2
    """)


def test_failures_in_the_list_are_shown_with_their_command():
    failure = RemoteFailure.from_exception(ZeroDivisionError("division by zero"), 1, "execute")
    failure.extra["result"] = result(1, 3, "print('x'); 1/0", "x\n")
    bare = RemoteFailure("KeyError", "'k'", "", engine_id=2, method="pull")
    results = ResultList([result(0, 3, "print('x'); 1/0", "x\n"), failure, bare])
    assert repr(results) == expected("""
        <Results List>
        [0] In [3]: print('x'); 1/0
        [0] Out[3]: x

        [1] In [3]: print('x'); 1/0
        [1] Out[3]: x
        [1] Error[3]: ZeroDivisionError: division by zero

        [2] Error: KeyError: 'k'
    """)


def test_empty_list_and_list_behaviour():
    assert repr(ResultList()) == "<Results List>"
    results = ResultList([result(0, 1, "a=5")])
    assert results == [result(0, 1, "a=5")]
    assert [r["number"] for r in results] == [1]


def test_ipython_shows_the_same_text():
    results = ResultList([result(0, 1, "print(1)", "1\n")])
    assert pretty(results) == repr(results)
    status = QueueStatusList([(0, {"queue": [], "pending": None})])
    assert pretty(status) == repr(status)


def test_queue_status_list():
    status = QueueStatusList([
        (0, {"queue": ["push", "execute"], "pending": "execute"}),
        (1, {"queue": [], "pending": None}),
        (2, {"queue": ["pull"], "pending": None}),
        (3, {"queue": [], "pending": "x" * 100 + "\nmore"}),
    ])
    assert repr(status) == expected(f"""
        <Queue Status List>
        [0] pending: execute
        [0] queued:  push
        [0]          execute
        [1] idle
        [2] queued:  pull
        [3] pending: {"x" * 69}...
    """)
    assert status[1] == (1, {"queue": [], "pending": None})
