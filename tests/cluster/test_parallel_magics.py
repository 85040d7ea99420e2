"""The parallel magics of plait.parallel's views (%px, %%px, %pxresult, %autopx,
%pxconfig, suffixed ones), in a real IPython shell, on a real 4-engine cluster,
beside those of the kernel generation."""

from __future__ import annotations

import re

import pytest

pytest.importorskip("IPython")


@pytest.fixture(scope="module")
def rc(cluster4):
    import plait.parallel

    client = plait.parallel.Client(cluster4.furl_file("client"))
    client.wait_for_engines(4, timeout=30)
    yield client
    client.close()


@pytest.fixture
def shell(ipython_shell, rc, capsys):
    """A fresh IPython shell with ``rc`` and ``dview = rc[:]`` (not activated);
    the engines' namespaces emptied."""
    rc[:].clear(block=True)
    sh = ipython_shell
    sh.user_ns.update(rc=rc, dview=rc[:])
    capsys.readouterr()
    return sh


@pytest.fixture
def ids(rc) -> list[int]:
    return rc.ids


def run(shell, capsys, cell: str) -> str:
    """Run ``cell`` as typed at the prompt; what it printed (stdout, then stderr)."""
    shell.run_cell(cell, store_history=True)
    out = capsys.readouterr()
    return out.out + out.err


def lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.strip("\n").splitlines()]


def outs(ids: list[int], value: str) -> list[str]:
    """The ``Out[engine]`` lines of ``value`` on ``ids`` (``Out[engine:count]`` once
    the engines give their execution count)."""
    return [f"Out[{i}]: {value}" for i in ids]


def same_outs(shown: list[str]) -> list[str]:
    return [re.sub(r"^Out\[(\d+):\d+\]", r"Out[\1]", line) for line in shown]


def activate_blocking(shell, capsys, view: str = "dview", suffix: str = "") -> None:
    assert run(shell, capsys, f"{view}.block = True\n{view}.activate({suffix!r})") == ""


# -- %px, %%px ------------------------------------------------------------------------------
def test_px_line_magic_blocking(shell, capsys, ids):
    activate_blocking(shell, capsys)
    assert run(shell, capsys, "%px a = 5") == ""
    assert lines(run(shell, capsys, "%px print(a * 2)")) == [f"[stdout:{i}] 10" for i in ids]
    assert same_outs(lines(run(shell, capsys, "%px a + 1"))) == outs(ids, "6")
    shown = same_outs(lines(run(shell, capsys, "%px print('x'); 'y'")))
    assert shown == [f"[stdout:{i}] x" for i in ids] + outs(ids, "'y'")
    assert "a" not in shell.user_ns  # nothing ran here
    assert shell.user_ns["dview"].pull("a") == [5] * 4
    assert run(shell, capsys, "px b = 1") == ""  # automagic
    assert "UsageError: %px runs code on the engines" in run(shell, capsys, "%px")


def test_cell_px_and_a_multiline_value(shell, capsys, ids):
    activate_blocking(shell, capsys)
    cell = ("%%px\nclass Two:\n    def __repr__(self):\n        return 'one\\ntwo'\n"
            "print('made')\nTwo()")
    shown = same_outs(lines(run(shell, capsys, cell)))
    expected = [f"[stdout:{i}] made" for i in ids]
    for i in ids:
        expected += [f"Out[{i}]:", "one", "two"]
    assert shown == expected


def test_px_nonblocking_returns_the_asyncresult_and_pxresult_shows_it(shell, capsys, ids):
    run(shell, capsys, "dview.activate()")  # a view of rc[:] does not block
    assert "there has been none yet" in run(shell, capsys, "%pxresult")
    shown = run(shell, capsys, "%px print('later'); 7")
    assert re.fullmatch(r"Out\[\d+\]: <AsyncResult\(execute\): (pending|finished)>\n", shown)
    assert same_outs(lines(run(shell, capsys, "%pxresult"))) == (
        [f"[stdout:{i}] later" for i in ids] + outs(ids, "7"))
    assert same_outs(lines(run(shell, capsys, "%pxresult -e"))) == [
        line for i in ids for line in (f"[stdout:{i}] later", f"Out[{i}]: 7")]
    run(shell, capsys, "%pxresult -o kept")
    assert shell.user_ns["kept"] is shell.user_ns["_"]  # the AsyncResult of the %px
    assert "invalid choice" in run(shell, capsys, "%pxresult --group-outputs=none")


def test_block_and_noblock_and_out(shell, capsys, ids):
    run(shell, capsys, "dview.activate()")
    assert lines(run(shell, capsys, "%%px --block\nprint('b')")) == [
        f"[stdout:{i}] b" for i in ids]
    assert lines(run(shell, capsys, "%%px -b\nprint('b')")) == [f"[stdout:{i}] b" for i in ids]
    run(shell, capsys, "dview.block = True")
    shown = run(shell, capsys, "%%px --noblock --out held\nprint('n')")
    assert "<AsyncResult(execute)" in shown and "[stdout" not in shown
    held = shell.user_ns["held"]
    assert held.get() == [None] * 4 and held.stdout == ["n\n"] * 4
    assert "<AsyncResult(execute)" in run(shell, capsys, "%%px -a\nz = 1")
    assert run(shell, capsys, "%pxresult") == ""  # z = 1 printed nothing


@pytest.mark.parametrize(("option", "chosen"), [
    ("--targets 0", [0]),
    ("--targets=0", [0]),
    ("-t 3", [3]),
    ("--targets ::2", [0, 2]),
    ("--targets 1:", [1, 2, 3]),
    ("--targets [::-1]", [3, 2, 1, 0]),
    ("--targets 1,3", [1, 3]),
    ("--targets [0,2]", [0, 2]),
    ("--targets all", [0, 1, 2, 3]),
])
def test_targets(shell, capsys, option, chosen):
    activate_blocking(shell, capsys)
    shown = lines(run(shell, capsys, f"%%px {option}\nimport os\nprint('on', os.getpid())"))
    assert [line.split("]")[0] for line in shown] == [f"[stdout:{i}" for i in chosen]
    assert shell.user_ns["dview"].targets == [0, 1, 2, 3]  # the view's own are kept


def test_group_outputs(shell, capsys, ids):
    activate_blocking(shell, capsys)
    run(shell, capsys, "dview.scatter('mine', rc.ids)")
    cell = "print('p', mine[0])\nimport sys; print('e', mine[0], file=sys.stderr)\nmine[0] * 10"

    def shown(option: str) -> tuple[list[str], list[str]]:
        shell.run_cell(f"%%px {option}\n{cell}")
        out = capsys.readouterr()
        return same_outs(lines(out.out)), lines(out.err)

    by_type = [f"[stdout:{i}] p {i}" for i in ids] + [f"Out[{i}]: {i * 10}" for i in ids]
    errors = [f"[stderr:{i}] e {i}" for i in ids]
    assert shown("") == (by_type, errors)
    assert shown("--group-outputs=type") == (by_type, errors)
    assert shown("--group-outputs order") == (by_type, errors)  # no display outputs here
    assert shown("-r") == (by_type, errors)
    by_engine = [line for i in ids for line in (f"[stdout:{i}] p {i}", f"Out[{i}]: {i * 10}")]
    assert shown("--group-outputs=engine") == (by_engine, errors)
    assert shown("-e") == (by_engine, errors)


def test_order_collates_display_outputs(shell, capsys, rc):
    """Display outputs (none come from engines yet): 'order' takes the first of each
    engine, then the second; 'type' all of one engine, then the next."""
    ar = rc[[0, 1]].execute("pass", block=False)
    ar.get()
    for md in ar.metadata:
        e = md["engine_id"]
        md["outputs"] = [f"first {e}", {"data": {"text/plain": f"second {e}"}}]
    capsys.readouterr()
    ar.display_outputs("order")
    assert lines(capsys.readouterr().out) == [
        "[output:0] first 0", "[output:1] first 1", "[output:0] second 0", "[output:1] second 1"]
    ar.display_outputs("type")
    assert lines(capsys.readouterr().out) == [
        "[output:0] first 0", "[output:0] second 0", "[output:1] first 1", "[output:1] second 1"]
    with pytest.raises(ValueError, match="groupby is 'type', 'engine' or 'order'"):
        ar.display_outputs("bogus")


def test_local_runs_the_cell_here_too(shell, capsys, ids):
    activate_blocking(shell, capsys)
    shown = lines(run(shell, capsys, "%%px --local\nwhere = 'both'\nprint(where)\nwhere"))
    here, there = shown[:2], shown[2:]
    assert here[0] == "both" and re.fullmatch(r"Out\[\d+\]: 'both'", here[1])
    assert same_outs(there) == [f"[stdout:{i}] both" for i in ids] + outs(ids, "'both'")
    assert shell.user_ns["where"] == "both"
    assert shell.user_ns["dview"].pull("where") == ["both"] * 4
    run(shell, capsys, "dview.block = False")
    shown = run(shell, capsys, "%%px --local\nonly_then = 1")
    assert "<AsyncResult(execute)" in shown and shell.user_ns["only_then"] == 1


def test_verbose(shell, capsys, ids):
    run(shell, capsys, "dview.activate()")
    assert lines(run(shell, capsys, "%%px --verbose --block\nv = 1")) == [
        f"Parallel execution on engine(s): {ids}"]
    shown = lines(run(shell, capsys, "%%px -v --targets 0\nv = 1"))
    assert shown[0] == "Async parallel execution on engine(s): 0"
    assert run(shell, capsys, "%%px --block\nv = 1") == ""
    run(shell, capsys, "%pxconfig --verbose")
    assert lines(run(shell, capsys, "%px v = 2"))[0] == (
        f"Async parallel execution on engine(s): {ids}")
    assert run(shell, capsys, "%%px --no-verbose --block\nv = 3") == ""
    run(shell, capsys, "%pxconfig --no-verbose")
    assert "execution on" not in run(shell, capsys, "%px v = 4")


def test_pxconfig(shell, capsys):
    run(shell, capsys, "dview.activate()")
    assert lines(run(shell, capsys, "%pxconfig")) == [
        "%px: targets [0, 1, 2, 3], block False, verbose False, stream False"]
    assert run(shell, capsys, "%pxconfig --targets 1,3 --block") == ""
    view = shell.user_ns["dview"]
    assert view.targets == [1, 3] and view.block is True
    assert lines(run(shell, capsys, "%px print('c')")) == ["[stdout:1] c", "[stdout:3] c"]
    run(shell, capsys, "%pxconfig --noblock --targets ::2")
    assert view.targets == [0, 2] and view.block is False
    assert "<AsyncResult(execute)" in run(shell, capsys, "%px c = 1")
    run(shell, capsys, "%pxconfig -t 2 -b")
    assert view.targets == 2
    assert run(shell, capsys, "%px print('one')") == "[stdout:2] one\n"
    run(shell, capsys, "%pxconfig --targets all")
    assert view.targets == "all"
    out = run(shell, capsys, "%pxconfig --targets 9")
    assert out.startswith("InvalidEngineID: no engine with id 9") and "Traceback" not in out
    assert view.targets == "all"


def test_bad_options_are_usage_errors(shell, capsys):
    run(shell, capsys, "dview.activate()")
    out = run(shell, capsys, "%%px --bogus\nx = 1")
    assert out.startswith("UsageError: %%px: unrecognized arguments: --bogus\nusage: %%px [-t")
    assert "expected one argument" in run(shell, capsys, "%%px --targets\nx = 1")
    assert "invalid choice: 'bogus'" in run(shell, capsys, "%%px --group-outputs=bogus\nx = 1")
    assert "UsageError: %%px: " in run(shell, capsys, "%%px --out 'unclosed\nx = 1")
    for bad in ("x", "1.5", "1:2:3:4", "a:b", "[]", "True"):
        out = run(shell, capsys, f"%%px --targets {bad}\nx = 1")
        assert out.startswith(f"UsageError: --targets {bad!r}: the engines to run on"), out
    assert "selects none of the engines" in run(shell, capsys, "%%px --targets 10:\nx = 1")
    assert "unrecognized arguments: --local" in run(shell, capsys, "%pxconfig --local")
    assert "unrecognized arguments: extra" in run(shell, capsys, "%pxconfig extra")
    assert run(shell, capsys, "%%px --no-stream --block\nx = 1") == ""
    assert "x" not in shell.user_ns
    assert run(shell, capsys, "%%px --block\n").startswith("UsageError: %%px")  # no cell


def test_engine_errors_are_shown_concisely_and_raised(shell, capsys, ids):
    activate_blocking(shell, capsys)
    result = shell.run_cell("%%px\nprint('before')\n1/0", store_history=True)
    out = capsys.readouterr().out
    shown = lines(out)
    assert shown[:4] == [f"[stdout:{i}] before" for i in ids]
    assert shown[4] == "CompositeError: one or more exceptions from call to method: execute"
    assert [re.sub(r"^\[(\d+):\w+\]", r"[\1]", line) for line in shown[5:]] == [
        f"[{i}]: ZeroDivisionError: division by zero" for i in ids]
    assert "Traceback" not in out
    assert type(result.error_in_exec).__name__ == "CompositeError"  # the cell failed
    run(shell, capsys, "import sys; err = sys.last_value")
    assert shell.user_ns["err"] is result.error_in_exec
    out = run(shell, capsys, "%%px --targets 2\nundefined_name")
    assert re.fullmatch(r"RemoteError: \[2:\w+\]: NameError: name 'undefined_name' is not "
                        r"defined\n", out)
    out = run(shell, capsys, "%%px --targets 9\nx = 1")
    assert out.startswith("InvalidEngineID: no engine with id 9") and "Traceback" not in out
    out = run(shell, capsys, "%px 1/0")
    assert out.startswith("CompositeError") and "Traceback" not in out
    assert "[0" in run(shell, capsys, "%pxresult")  # shown again, raised again
    assert type(shell.user_ns["err"]).__name__ == "CompositeError"


# -- %autopx ---------------------------------------------------------------------------------
def test_autopx_on_and_off(shell, capsys, ids):
    activate_blocking(shell, capsys)
    shell.execution_count = 40
    assert lines(run(shell, capsys, "%autopx")) == ["%autopx enabled"]
    assert run(shell, capsys, "q = 7") == ""
    assert lines(run(shell, capsys, "print(q)")) == [f"[stdout:{i}] 7" for i in ids]
    assert same_outs(lines(run(shell, capsys, "q * 2"))) == outs(ids, "14")
    error = run(shell, capsys, "q / 0")
    assert error.startswith("CompositeError: one or more exceptions") and "Traceback" not in error
    assert "ZeroDivisionError" in error
    assert run(shell, capsys, "") == ""
    assert shell.execution_count == 45
    assert lines(run(shell, capsys, " %autopx ")) == ["%autopx disabled"]
    assert shell.execution_count == 46
    assert "q" not in shell.user_ns  # the cells ran on the engines only
    assert shell.user_ns["dview"].pull("q") == [7] * 4
    assert run(shell, capsys, "1 + 1").strip().endswith("2")  # local again
    history = shell.history_manager.input_hist_raw
    assert "q = 7" in history and " %autopx " in history


def test_autopx_nonblocking_then_pxresult(shell, capsys, ids):
    run(shell, capsys, "dview.activate()")
    run(shell, capsys, "%pxconfig --verbose")
    assert lines(run(shell, capsys, "autopx")) == ["%autopx enabled"]  # automagic
    assert lines(run(shell, capsys, "print('queued')")) == [
        f"Async parallel execution on engine(s): {ids}"]
    assert lines(run(shell, capsys, "autopx")) == ["%autopx disabled"]
    assert lines(run(shell, capsys, "%pxresult")) == [f"[stdout:{i}] queued" for i in ids]


# -- suffixes, activation --------------------------------------------------------------------
def test_suffixed_magics_leave_the_others_alone(shell, capsys):
    run(shell, capsys, "even = rc[::2]\neven.block = True\neven.activate('_even')")
    assert lines(run(shell, capsys, "%px_even print('e')")) == ["[stdout:0] e", "[stdout:2] e"]
    assert lines(run(shell, capsys, "%%px_even --targets 2\nprint('two')")) == [
        "[stdout:2] two"]
    assert lines(run(shell, capsys, "%pxresult_even")) == ["[stdout:2] two"]
    assert run(shell, capsys, "%pxconfig_even --targets 0") == ""
    assert shell.user_ns["even"].targets == 0
    assert lines(run(shell, capsys, "%pxconfig_even")) == [
        "%px_even: targets 0, block True, verbose False, stream False"]
    out = run(shell, capsys, "%%px_even --bogus\nx = 1")
    assert out.startswith("UsageError: %%px_even: unrecognized arguments: --bogus")
    assert "no active MultiEngineClient or view" in run(shell, capsys, "%px x = 1")
    assert "`%pxresult` not found" in run(shell, capsys, "%pxresult")
    assert "`%pxconfig` not found" in run(shell, capsys, "%pxconfig")
    assert lines(run(shell, capsys, "%autopx_even")) == ["%autopx_even enabled"]
    assert lines(run(shell, capsys, "print('auto')")) == ["[stdout:0] auto"]
    assert lines(run(shell, capsys, "%autopx_even")) == ["%autopx_even disabled"]
    run(shell, capsys, "%autopx_even")
    assert lines(run(shell, capsys, "%autopx")) == ["%autopx_even disabled"]  # ends it too
    run(shell, capsys, "dview.block = True\ndview.activate()")
    assert len(lines(run(shell, capsys, "%px print('all')"))) == 4
    assert lines(run(shell, capsys, "%px_even print('still')")) == ["[stdout:0] still"]
    assert "Docstring:" in run(shell, capsys, "%px_even?")


def test_client_activate_and_the_last_activated_view_owns_px(shell, capsys):
    run(shell, capsys, "one = rc.activate(1, '1')")
    assert run(shell, capsys, "%px1 w = 1") == ""  # rc.activate's view blocks
    assert shell.user_ns["one"].block is True
    assert lines(run(shell, capsys, "%%px1 --block\nprint('one')")) == ["[stdout:1] one"]
    assert shell.user_ns["one"].targets == 1
    run(shell, capsys, "a = rc[[0]]\na.block = True\na.activate()")
    run(shell, capsys, "b = rc[[3]]\nb.block = True\nb.activate()")
    assert lines(run(shell, capsys, "%px print('last')")) == ["[stdout:3] last"]
    run(shell, capsys, "a.activate()")
    assert lines(run(shell, capsys, "%px print('last')")) == ["[stdout:0] last"]
    with pytest.raises(ValueError, match="suffix"):
        shell.user_ns["a"].activate("-x")


def test_both_generations_in_one_shell(shell, capsys, cluster4, ids):
    shell.user_ns["furl"] = cluster4.furl_file("mec")
    run(shell, capsys, "from plait.kernel import client\nmec = client.MultiEngineClient(furl)")
    run(shell, capsys, "mec.activate()")
    assert run(shell, capsys, "%px k = 1").startswith("Executing command on Controller\n")
    activate_blocking(shell, capsys)
    assert lines(run(shell, capsys, "%px print(k + 1)")) == [f"[stdout:{i}] 2" for i in ids]
    assert "<Results List>" in run(shell, capsys, "%result")  # the kernel's, still
    run(shell, capsys, "mec.activate()")
    out = run(shell, capsys, "%px print(k + 2)")
    assert out.startswith("Executing command on Controller\n") and "<Results List>" in out
    assert "[stdout" not in out
    assert "runs on the MultiEngineClient activated last" in run(shell, capsys, "%pxresult")
    assert "runs on the MultiEngineClient activated last" in run(shell, capsys, "%pxconfig")
    assert lines(run(shell, capsys, "%autopx")) == ["Auto Parallel Enabled",
                                                   "Type %autopx to disable"]
    assert run(shell, capsys, "k = 5").startswith("<Results List>")
    assert lines(run(shell, capsys, "%autopx")) == ["Auto Parallel Disabled"]
    run(shell, capsys, "dview.activate()")  # the view again: its last result kept
    assert lines(run(shell, capsys, "%pxresult")) == [f"[stdout:{i}] 2" for i in ids]
    assert lines(run(shell, capsys, "%autopx")) == ["%autopx enabled"]
    assert lines(run(shell, capsys, "print(k)")) == [f"[stdout:{i}] 5" for i in ids]
    assert lines(run(shell, capsys, "%autopx")) == ["%autopx disabled"]
    out = run(shell, capsys, "%px 1/0")
    assert out.startswith("CompositeError") and "Executing" not in out
    run(shell, capsys, "mec.activate()")
    out = run(shell, capsys, "%px 1/0")
    assert out.startswith("Executing command on Controller\n")
    assert "CompositeError: one or more exceptions from call to method: execute" in out
    assert "Traceback" not in out


def test_px_stream_shows_output_while_the_cell_runs(shell, capsys, tmp_path):
    """The first line is printed, then the cell waits at a gate that only the
    streamed output can open: the test's stand-in opens it when it sees the line."""
    from support.cluster import Gate

    gate = Gate(tmp_path)
    run(shell, capsys, "v = rc.activate()")
    seen = []
    real_write = None

    import sys

    class Watch:
        def write(self, text):
            seen.append(text)
            if "[stdout:0] before" in "".join(seen) and not gate_opened:
                gate_opened.append(True)
                gate.open()
            return real_write(text)

        def flush(self):
            pass

    gate_opened: list = []
    real_write = sys.stdout.write
    code = f"print('before', flush=True)\nopen({gate.path!r}).read()\nprint('after')"
    shell.user_ns["code"] = code
    old = sys.stdout
    sys.stdout = Watch()
    try:
        shell.run_cell(f"%%px --stream --targets 0\n{code}")
    finally:
        sys.stdout = old
    out = "".join(seen)
    assert gate_opened  # the first line came while the cell was still running
    assert out.index("[stdout:0] before") < out.index("[stdout:0] after")
    assert out.count("[stdout:0] before") == 1  # not shown again at the end


def test_pxconfig_stream_makes_it_the_default(shell, capsys):
    run(shell, capsys, "v = rc.activate()")
    run(shell, capsys, "%pxconfig --stream")
    assert "stream True" in run(shell, capsys, "%pxconfig")
    out = run(shell, capsys, "%%px --targets 1\nprint('streamed')")
    assert lines(out) == ["[stdout:1] streamed"]
    run(shell, capsys, "%pxconfig --no-stream")



def ctrl_c_once_it_runs(fifo: str):
    """A started thread that presses Ctrl-C (SIGINT to the main thread) as soon as
    the engine's code writes to the named pipe ``fifo`` (an event: it runs now)."""
    import signal
    import threading

    def press() -> None:
        with open(fifo) as f:
            f.read()
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    presser = threading.Thread(target=press)
    presser.start()
    return presser


def test_ctrl_c_on_a_blocking_px_interrupts_the_engines_too(shell, capsys, rc, tmp_path):
    from support.cluster import Signal

    hanging = Signal(tmp_path)
    presser = ctrl_c_once_it_runs(hanging.path)
    run(shell, capsys, "v = rc.activate()\nv.block = True")
    out = run(shell, capsys, f"%%px --targets 1\n{hanging.code}")
    presser.join()
    assert "Keyboard interrupt: sending SIGINT to engine(s) [1]" in out
    assert "KeyboardInterrupt" in out
    # the engine's code was interrupted too: it is free at once, not 120 s later
    assert rc[1].apply_sync(lambda: "free again") == "free again"
    assert rc.ids == [0, 1, 2, 3]


def test_no_signal_on_interrupt_leaves_the_engines_alone(shell, capsys, rc, tmp_path):
    from support.cluster import Gate

    started, gate = Gate(tmp_path, "started"), Gate(tmp_path)
    presser = ctrl_c_once_it_runs(started.path)
    run(shell, capsys, "v = rc.activate()\nv.block = True")
    code = f"open({started.path!r}, 'w').write('1')\n{gate.wait_code}"
    out = run(shell, capsys, f"%%px --targets 2 --no-signal-on-interrupt\n{code}")
    presser.join()
    assert "sending" not in out and "KeyboardInterrupt" in out
    gate.open()  # the engine still waits there (were it interrupted, this would hang)
    assert rc[2].apply_sync(lambda: "done") == "done"


def test_a_bad_signal_on_interrupt_is_a_usage_error(shell, capsys):
    run(shell, capsys, "v = rc.activate()\nv.block = True")
    out = run(shell, capsys, "%%px --signal-on-interrupt SIGNOPE\na = 1")
    assert "'SIGNOPE' is not a signal" in out
