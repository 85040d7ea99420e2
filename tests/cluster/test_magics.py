"""The parallel magics (%px, %%px, %autopx, %result) in a real IPython shell,
on a real 4-engine cluster."""

from __future__ import annotations

import pytest

pytest.importorskip("IPython")




@pytest.fixture
def shell(ipython_shell, cluster4, capsys):
    """A fresh IPython shell with ``mec`` connected to the cluster (not activated)."""
    sh = ipython_shell
    sh.user_ns["furl"] = cluster4.furl_file("mec")
    sh.run_cell("from plait.kernel import client\nmec = client.MultiEngineClient(furl)\nmec.reset()")
    capsys.readouterr()
    return sh


def run(shell, capsys, cell: str) -> str:
    """Run ``cell`` as typed at the prompt; what it printed (stdout and stderr)."""
    shell.run_cell(cell, store_history=True)
    out = capsys.readouterr()
    return out.out + out.err


def lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.strip("\n").splitlines()]


def test_px_and_result_after_activate(shell, capsys):
    assert run(shell, capsys, "mec.activate()") == ""
    n = shell.user_ns["mec"].execute("pass")[0]["number"] + 1
    shell.execution_count = 26
    assert lines(run(shell, capsys, "%px a = 5")) == [
        "Executing command on Controller",
        "Out[26]:",
        "<Results List>",
        *[f"[{i}] In [{n}]: a = 5" for i in range(4)],
    ]
    shown = lines(run(shell, capsys, "%px print(a * 2)"))
    assert shown[:5] == [
        "Executing command on Controller", "Out[27]:", "<Results List>",
        f"[0] In [{n + 1}]: print(a * 2)", f"[0] Out[{n + 1}]: 10",
    ]
    assert lines(run(shell, capsys, "%result")) == ["Out[28]:", *shown[2:]]
    earlier = lines(run(shell, capsys, f"%result {n}"))
    assert earlier[2] == f"[0] In [{n}]: a = 5"


def test_px_as_automagic_and_cell_magic(shell, capsys):
    shell.run_cell("mec.activate()")
    capsys.readouterr()
    assert "Out[" in run(shell, capsys, "px b = 3")
    out = lines(run(shell, capsys, "%%px\nc = b + 1\nprint(c)"))
    assert out[0] == "Executing command on Controller"
    assert [line for line in out if line.startswith("[2] Out")] and out[-1].endswith(": 4")
    assert shell.user_ns["mec"].pull("c") == [4] * 4
    assert "c" not in shell.user_ns  # nothing ran here


def test_load_ext_then_activate(shell, capsys):
    assert run(shell, capsys, "%load_ext plait") == ""
    out = run(shell, capsys, "%px x = 1")
    assert "UsageError: no active MultiEngineClient" in out
    assert "mec.activate()" in out
    shell.run_cell("mec.activate()")
    assert "Executing command on Controller" in run(shell, capsys, "%px x = 1")
    assert "UsageError: %px runs code on the engines" in run(shell, capsys, "%px")


def test_px_shows_engine_errors_concisely(shell, capsys):
    shell.run_cell("mec.activate()")
    capsys.readouterr()
    out = run(shell, capsys, "%px 1/0")
    assert out.startswith("Executing command on Controller\n")
    assert "CompositeError: one or more exceptions from call to method: execute" in out
    assert "[3:execute]: ZeroDivisionError: division by zero" in out
    assert "Traceback" not in out
    run(shell, capsys, "import sys; err = sys.last_value")
    assert type(shell.user_ns["err"]).__name__ == "CompositeError"


def test_autopx_as_in_the_guide(shell, capsys):
    run(shell, capsys, "mec.activate()")
    run(shell, capsys, "mec.block = False")
    shell.execution_count = 31
    assert lines(run(shell, capsys, "%autopx")) == [
        "Auto Parallel Enabled", "Type %autopx to disable",
    ]
    assert run(shell, capsys, "max_evals = []").startswith("<PendingResult execute")
    cell = (
        "for i in range(100):\n"
        "    a = numpy.random.rand(10, 10)\n"
        "    a = a + a.transpose()\n"
        "    evals = numpy.linalg.eigvals(a)\n"
        "    max_evals.append(evals[0].real)\n"
    )
    run(shell, capsys, "import numpy")
    assert "<PendingResult execute" in run(shell, capsys, cell)
    assert shell.execution_count == 35
    assert lines(run(shell, capsys, "%autopx")) == ["Auto Parallel Disabled"]
    assert shell.execution_count == 36
    assert "max_evals" not in shell.user_ns  # the cells ran on the engines only
    run(shell, capsys, "mec.block = True")
    out = run(shell, capsys, 'px print("Average max eigenvalue is: ", sum(max_evals)/len(max_evals))')
    assert out.count("Out[") == 5 and out.count("Average max eigenvalue is:  ") == 4
    history = shell.history_manager.input_hist_raw
    assert "max_evals = []" in history and "%autopx" in history


def test_autopx_blocking_shows_results_and_errors(shell, capsys):
    run(shell, capsys, "mec.activate()")
    run(shell, capsys, "%autopx")
    out = lines(run(shell, capsys, "q = 7\nprint(q)"))
    assert out[0] == "<Results List>" and out[1].endswith(": q = 7") and "Out[" in out[3]
    error = run(shell, capsys, "undefined_name")
    assert "CompositeError" in error and "[0:execute]: NameError" in error
    assert run(shell, capsys, "") == ""
    assert lines(run(shell, capsys, " %autopx ")) == ["Auto Parallel Disabled"]
    assert shell.user_ns["mec"].pull("q") == [7] * 4
    assert run(shell, capsys, "1 + 1").strip().endswith("2")  # local again


def test_autopx_needs_an_active_client(shell, capsys):
    run(shell, capsys, "%load_ext plait")
    assert "no active MultiEngineClient" in run(shell, capsys, "%autopx")
    assert "Auto Parallel" not in run(shell, capsys, "1")


def test_with_block_in_a_cell(shell, capsys):
    cell = "local = 1\nwith mec:\n    client.remote()\n    local = 2\n    remote_only = local * 10\n"
    assert run(shell, capsys, cell) == ""
    assert shell.user_ns["local"] == 1 and "remote_only" not in shell.user_ns
    assert shell.user_ns["mec"].pull("remote_only") == [20] * 4


def test_interactive_functions_see_the_engine_namespace(shell, capsys):
    run(shell, capsys, "mec.push({'offset': 100})")
    run(shell, capsys, "result = mec.map(lambda x: x + offset, range(4))")
    assert shell.user_ns["result"] == [100, 101, 102, 103]


def test_blocking_client_in_a_cell_with_top_level_await(shell, capsys):
    """IPython runs such a cell in its asyncio loop, in the main thread (as Jupyter)."""
    out = run(shell, capsys, "import asyncio\nawait asyncio.sleep(0)\nmec.map(abs, [-1, -2])")
    assert out.strip().endswith("[1, 2]")


def test_an_asynchronous_client_can_be_activated(shell, capsys, cluster4):
    from plait.kernel import client
    from support import in_reactor

    async_mec = in_reactor(client.AsyncMultiEngineClient.connect, cluster4.furl_file("mec"))
    async_mec.activate()
    out = lines(run(shell, capsys, "%px shared = 'via the async client'"))
    assert out[0] == "Executing command on Controller" and out[2] == "<Results List>"
    assert shell.user_ns["mec"].pull("shared") == ["via the async client"] * 4


def test_findsource_ipython_reads_the_cell_from_the_history(shell, capsys):
    cell = (
        "import sys\n"
        "class Grab:\n"
        "    def __enter__(self):\n"
        "        self.code = mec.findsource_ipython(sys._getframe(1))\n"
        "    def __exit__(self, *exc):\n"
        "        return True\n"
        "grab = Grab()\n"
        "with grab:\n"
        "    client.remote()\n"
        "    z = 5\n"
        "    print(z)\n"
    )
    assert run(shell, capsys, cell) == ""
    assert shell.user_ns["grab"].code == "z = 5\nprint(z)\n"
    assert "z" not in shell.user_ns
