"""plait in a real Jupyter kernel: a notebook executed by nbclient (an ipykernel
kernel of this Python) against a real 4-engine cluster, its outputs checked: the
magics of both generations (%px, %%px --stream, %pxconfig, %pxresult, %autopx,
%result), progress widgets (asked for, and shown by default once a wait lasts),
an executor, and the kernel generation's client beside the later one; and
%%px --stream output arriving while its cell still runs."""

from __future__ import annotations

import importlib.util
import json

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

CELLS = [
    "import os\nimport plait.parallel as ipp\nrc = ipp.Client()\n"
    "print(rc.wait_for_engines(4, timeout=30))\ndview = rc[:]\ndview.block = True\n"
    "dview.activate()",
    "%px import os",
    "%px print('pid', os.getpid() > 0)",
    "%%px --stream --targets 0\nimport time\nfor i in range(3):\n"
    "    print('step', i, flush=True)\n    time.sleep(0.05)",
    "ar = rc.load_balanced_view().map_async(abs, range(-20, 0), chunksize=1)\n"
    "ar.wait_interactive()\nprint(sum(ar.get()))",
    "with rc.executor() as ex:\n    print(ex.submit(pow, 2, 10).result())",
    "from plait.kernel import client\nmec = client.MultiEngineClient()\n"
    "mec.push({'shared': 42})\nprint(rc[:]['shared'])",
    # the kernel generation's bars are the same widget
    "tc = client.TaskClient()\nprint(sum(tc.map(abs, range(-8, 0), chunksize=1, "
    "progress=True)))",
    # by default, a wait that lasts shows its bar without being asked (after 3 s:
    # 0.2 s here)
    "from plait.kernel.client import _progress\n_progress.PROGRESS_AFTER = 0.2\n"
    "import time\nprint(rc.load_balanced_view().apply_async(time.sleep, 1).get())",
    # the other magics of the later generation: %pxconfig, %pxresult, %autopx
    "%pxconfig --targets 1",
    "%px print('on', os.getpid() == os.getpid(), 'engine one')",
    "%pxresult",
    "%autopx",
    "auto_value = 6 * 7",
    "%autopx",
    "%pxconfig --targets all\nprint(rc[1]['auto_value'], 'auto_value' in globals())",
    # the kernel generation's magics, on its client activated now
    "mec.activate()\nmec.block = True",
    "%px kernel_value = 11",
    "%result",
    "print(mec.pull('kernel_value'))",
]


def _text(cell) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


def _widgets(cell) -> list:
    return [o for o in cell.outputs if o.output_type == "display_data"
            and "application/vnd.jupyter.widget-view+json" in o.get("data", {})]


def test_a_notebook_drives_the_cluster(cluster4, monkeypatch):
    monkeypatch.setenv("PLAIT_DIR", str(cluster4.plait_dir))  # (the kernel's Client())
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in CELLS]
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                            allow_errors=False).execute()
    cells = nb.cells
    assert _text(cells[0]).strip() == "[0, 1, 2, 3]"
    pids = _text(cells[2])
    assert all(f"[stdout:{i}] pid True" in pids for i in range(4)), pids
    assert "[stdout:0] step 0" in _text(cells[3]) and "step 2" in _text(cells[3])
    # the progress bar is tqdm's notebook widget, and the result follows
    kinds = [o.output_type for o in cells[4].outputs]
    widgets = _widgets(cells[4])
    if importlib.util.find_spec("ipywidgets") is not None:
        assert widgets, kinds  # (without ipywidgets: plain lines)
        assert "abs:" in widgets[0]["data"]["text/plain"]
    else:
        assert "tasks done" in json.dumps(cells[4].outputs), kinds
    assert _text(cells[4]).strip().endswith("210")
    assert _text(cells[5]).strip() == "1024"
    assert _text(cells[6]).strip() == "[42, 42, 42, 42]"
    for index, desc, printed in ((7, "map:", "36"), (8, "sleep:", "None")):
        if importlib.util.find_spec("ipywidgets") is not None:
            [widget] = _widgets(cells[index])
            assert desc in widget["data"]["text/plain"], widget
        assert _text(cells[index]).strip().endswith(printed), cells[index].outputs
    # %pxconfig chose engine 1 alone; %pxresult shows its output again
    assert _text(cells[10]).strip() == "[stdout:1] on True engine one", cells[10].outputs
    assert "[stdout:1] on True engine one" in _text(cells[11]), cells[11].outputs
    assert _text(cells[12]).strip() == "%autopx enabled" and not cells[13].outputs
    assert _text(cells[14]).strip() == "%autopx disabled"
    assert _text(cells[15]).strip() == "42 False"  # (it ran on engine 1, not here)
    result = cells[18].outputs[0]["data"]["text/plain"]  # %result: each engine's last
    assert result.startswith("<Results List>") and result.count("kernel_value = 11") == 4
    assert _text(cells[19]).strip() == "[11, 11, 11, 11]", cells[19].outputs


def test_px_stream_shows_each_line_as_the_engine_prints_it(cluster4, monkeypatch, tmp_path):
    """In a real Jupyter kernel, ``%%px --stream`` output reaches the notebook
    while the cell still runs: the first line arrives, the cell is still busy
    (its engine waits at a gate), and only then does the test let it finish."""
    from jupyter_client.manager import start_new_kernel

    from support.cluster import Gate

    monkeypatch.setenv("PLAIT_DIR", str(cluster4.plait_dir))
    gate = Gate(tmp_path)
    km, kc = start_new_kernel(kernel_name="python3", startup_timeout=60)
    try:
        kc.execute_interactive("import plait.parallel as ipp\nrc = ipp.Client()\n"
                               "rc.wait_for_engines(4, timeout=30)\ndview = rc[:]\n"
                               "dview.block = True\ndview.activate()",
                               timeout=60)
        cell = kc.execute(f"%%px --stream --targets 0\nprint('before the gate', flush=True)\n"
                          f"{gate.wait_code}\nprint('after the gate', flush=True)")

        def next_output(timeout: float) -> tuple[str, str]:
            """(kind, text) of the cell's next stream output or status change."""
            while True:
                msg = kc.get_iopub_msg(timeout=timeout)
                if msg["parent_header"].get("msg_id") != cell:
                    continue
                kind = msg["msg_type"]
                if kind == "stream":
                    return kind, msg["content"]["text"]
                if kind == "status":
                    return kind, msg["content"]["execution_state"]
                if kind == "error":
                    return kind, "\n".join(msg["content"]["traceback"])

        try:
            _stream_then_finish(next_output, gate)
        finally:
            gate.release(1)  # (if the test failed with the engine at the gate)
        assert kc.get_shell_msg(timeout=60)["content"]["status"] == "ok"
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def _stream_then_finish(next_output, gate) -> None:
    """The first line while the cell runs, the gate opened, the second line, idle."""
    seen = ""
    while "before the gate" not in seen:
        kind, text = next_output(60)
        assert kind in ("stream", "status") and text != "idle", (kind, text)
        seen += text if kind == "stream" else ""
    assert "[stdout:0] before the gate" in seen and "after the gate" not in seen
    gate.open()  # (the cell was still running: now let it finish)
    while "after the gate" not in seen:
        kind, text = next_output(60)
        assert kind in ("stream", "status") and text != "idle", (kind, text)
        seen += text if kind == "stream" else ""
    while next_output(60) != ("status", "idle"):
        pass
