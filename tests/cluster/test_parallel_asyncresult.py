"""``AsyncResult`` over real processes: the multiprocessing interface, the
Future interface, metadata and timing, splitting and joining.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime
import os
import sys
import threading

import cloudpickle
import pytest

import plait.parallel as ipp
from plait.parallel import error
from support.cluster import Gate, opened_once_a_bar_shows

cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def rc(cluster4):
    with cluster4.rc() as c:
        yield c


def talk(x):
    import sys

    print("out", x)
    print("err", x, file=sys.stderr)
    return x


def fail():
    raise ValueError("bad")


def test_get_dict_keyed_by_engine(rc):
    ar = rc[:].apply_async(os.getpid)
    pids = ar.get_dict()
    assert sorted(pids) == [0, 1, 2, 3]
    rc[:]["pid_map"] = pids
    assert rc[2]["pid_map"] == pids
    lview = rc.load_balanced_view()
    with pytest.raises(ValueError, match="more than once"):
        ipp.AsyncResult.join(*[rc[0].apply_async(os.getpid) for _ in range(2)]).get_dict()
    assert lview.apply_async(os.getpid).get_dict().keys() <= {0, 1, 2, 3}


def test_metadata_keys_and_attribute_access(rc):
    before = datetime.datetime.now()
    ar = rc[1].apply_async(talk, 5)
    ar.get()
    md = ar.metadata
    assert md.engine_id == md["engine_id"] == ar.engine_id == 1
    assert isinstance(md.engine_uuid, str) and md.engine_uuid
    assert md.stdout == ar.stdout == "out 5\n"
    assert md.stderr == "err 5\n"
    assert md.status == "ok" and md.pyerr is None
    assert md.msg_id == ar.msg_ids[0]
    assert md.after == [] and md.follow == []
    for key in ("submitted", "started", "completed", "received"):
        assert isinstance(md[key], datetime.datetime), key
    assert before <= md.submitted <= md.started <= md.completed <= md.received
    assert ar["engine_id"] == 1
    with pytest.raises(AttributeError):
        _ = ar.no_such_key


def test_metadata_of_several_tasks_is_a_list(rc):
    ar = rc[:].apply_async(talk, 1)
    ar.get()
    assert ar.engine_id == [0, 1, 2, 3]
    assert len(ar.metadata) == 4
    assert all(md.status == "ok" for md in ar.metadata)


def test_error_metadata(rc):
    ar = rc[0].apply_async(fail)
    ar.wait()
    assert ar.metadata.status == "error"
    assert ar.metadata.pyerr.ename == "ValueError"
    assert not ar.successful()


def test_timing(rc):
    lview = rc.load_balanced_view()
    ar = lview.map_async(lambda x: sum(range(20000)) + x, range(40), chunksize=2)
    ar.get()
    assert ar.progress == len(ar) == 20
    assert 0 < ar.serial_time
    assert 0 < ar.wall_time
    assert ar.elapsed == ar.wall_time
    speedup = ar.serial_time / ar.wall_time
    assert speedup > 0


def test_wait_interactive_prints_progress(rc, capsys):
    ar = rc.load_balanced_view().map_async(abs, range(8), chunksize=1)
    ar.wait_interactive(interval=0.01)
    out = capsys.readouterr().out
    assert "8/   8 tasks finished" in out and out.rstrip().endswith("done")


def test_future_interface(rc):
    ar = rc[0].apply_async(lambda: 11)
    assert isinstance(ar, concurrent.futures.Future)
    assert ar.result(timeout=30) == 11
    done, _ = concurrent.futures.wait([ar])
    assert ar in done
    seen = []
    ar.add_done_callback(lambda f: seen.append(f.result()))
    assert seen == [11]  # already done: called at once
    called = threading.Event()
    later = rc[0].apply_async(lambda: 12)
    later.add_done_callback(lambda f: (seen.append(f.result()), called.set()))
    assert called.wait(30)
    assert seen == [11, 12]


def test_a_wait_is_not_ended_by_other_results_of_the_client(rc, tmp_path):
    """The results of a client share one condition: results of other tasks
    arriving meanwhile wake a waiter, which looks again and waits on."""
    gate = Gate(tmp_path)
    slow = rc[0].apply_async(gate.waiter())
    got: list = []
    waiting = threading.Thread(target=lambda: got.append(slow.get(timeout=60)))
    waiting.start()
    try:
        lview = rc.load_balanced_view(targets=[1, 2, 3])
        assert lview.map_sync(abs, range(-50, 0)) == list(range(50, 0, -1))  # 50 results
        with pytest.raises(concurrent.futures.TimeoutError):
            slow.exception(timeout=0.2)  # (the Future's: TimeoutError while pending)
        with pytest.raises(ipp.error.TimeoutError):
            slow.get(timeout=0.2)
        assert not slow.done() and got == [] and waiting.is_alive()
    finally:
        gate.open()
    waiting.join(60)
    assert got == ["go"]
    assert slow.exception(timeout=30) is None
    failed = rc[1].apply_async(fail)
    assert isinstance(failed.exception(timeout=30), error.RemoteError)


def test_awaiting_in_asyncio(rc):
    async def main():
        return await rc[0].apply_async(lambda: "awaited")

    assert asyncio.run(main()) == "awaited"


def test_wait_return_when(rc, tmp_path):
    gate = Gate(tmp_path)
    lview = rc.load_balanced_view()
    slow = lview.apply_async(gate.waiter())
    quick = lview.apply_async(abs, -1)
    both = ipp.AsyncResult.join(slow, quick)
    try:
        assert both.wait(return_when=concurrent.futures.FIRST_COMPLETED) is False
        assert both.progress == 1
        failing = ipp.AsyncResult.join(slow, lview.apply_async(fail))
        assert failing.wait(return_when=concurrent.futures.FIRST_EXCEPTION) is False
    finally:
        gate.open()
    assert both.get() == ["go", 1]


def test_get_return_exceptions(rc):
    ar = ipp.AsyncResult.join(rc[0].apply_async(abs, -2), rc[1].apply_async(fail))
    values = ar.get(return_exceptions=True)
    assert values[0] == 2 and isinstance(values[1], error.RemoteError)
    with pytest.raises(error.CompositeError):
        ar.get()


def test_split_and_join(rc):
    ar = rc[:].apply_async(abs, -3)
    parts = ar.split()
    assert len(parts) == 4
    assert [p.get() for p in parts] == [3] * 4
    assert parts[2].engine_id == 2
    joined = ipp.AsyncResult.join(*parts)
    assert joined.get() == [3] * 4
    assert joined.msg_ids == ar.msg_ids
    assert (parts[0] + parts[1]).get() == [3, 3]
    with pytest.raises(ValueError):
        ipp.AsyncResult.join()


def test_indexing_iterating_and_r(rc):
    ar = rc[:].apply_async(abs, -4)
    assert ar.r == [4] * 4
    assert ar[1] == 4 and ar[1:3] == [4, 4]
    assert list(ar) == [4] * 4
    assert len(ar) == 4


def test_sent_and_wait_for_send(rc):
    ar = rc[0].apply_async(abs, -5)
    assert ar.wait_for_send() is True
    assert ar.sent is True
    assert ar.get() == 5


def test_display_outputs(rc, capsys):
    ar = rc[:2].apply_async(talk, 7)
    ar.get()
    ar.display_outputs()
    captured = capsys.readouterr()
    assert "[stdout:0] out 7" in captured.out and "[stdout:1] out 7" in captured.out
    assert "[stderr:0] err 7" in captured.err


def test_execute_result_as_pyout(rc):
    ar = rc[:2].execute("21 * 2", silent=False)
    ar.get()
    assert all("42" in str(md.pyout) for md in ar.metadata)


def test_view_wait_and_outstanding(rc, tmp_path):
    gate = Gate(tmp_path)
    view = rc.load_balanced_view()
    ar = view.apply_async(gate.waiter())
    assert ar.msg_ids[0] in view.outstanding
    assert ar.msg_ids[0] in rc.outstanding
    assert view.wait(timeout=0) is False
    gate.open()
    assert view.wait() is True
    assert not view.outstanding


def test_spin_does_nothing_harmful(rc):
    rc.spin()
    rc[:].spin()
    assert rc[0].apply_sync(abs, -1) == 1


def test_stream_output_shows_what_tasks_print_while_they_run(rc, tmp_path):
    gates = [Gate(tmp_path, f"gate{engine}") for engine in (0, 1)]

    def two_lines(wait):
        import sys

        print("first", flush=True)
        print("to stderr", file=sys.stderr, flush=True)
        wait()
        print("second")
        return "done"

    ar = ipp.AsyncResult.join(*[rc[e].apply_async(two_lines, gates[e].waiter())
                                for e in (0, 1)])

    class Opener:
        """Opens an engine's gate once its first lines were shown: only
        streaming can show them, as the task waits at the gate."""

        def __init__(self):
            self.text = ""
            self.opened = set()

        def write(self, text):
            self.text += text
            for engine in (0, 1):
                if (engine not in self.opened and f"[stdout:{engine}] first" in self.text
                        and f"[stderr:{engine}] to stderr" in self.text):
                    self.opened.add(engine)
                    gates[engine].open()

        def flush(self):
            pass

    out = Opener()
    assert ar.stream_output(file=out) is True
    assert ar.get() == ["done", "done"]
    assert out.opened == {0, 1}
    for engine in (0, 1):
        assert out.text.count(f"[stdout:{engine}] second") == 1
        assert out.text.count(f"[stdout:{engine}] first") == 1
    assert ar.stdout == ["first\nsecond\n"] * 2  # the whole output, from the results


def test_stream_output_times_out_while_tasks_run(rc, tmp_path):
    gate = Gate(tmp_path)
    ar = rc[3].apply_async(gate.waiter())
    try:
        assert ar.stream_output(timeout=0.1) is False
    finally:
        gate.open()
    assert ar.get() == "go"


# -- progress --------------------------------------------------------------------------------
def test_progress_lines_where_no_bar_can_be_drawn(rc, capsys):
    ar = rc.load_balanced_view().map_async(abs, range(8), chunksize=1)
    assert ar.get(progress=True) == list(range(8))
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("plait: abs: 8/8 tasks done after")
    ar = rc.load_balanced_view().map_async(abs, range(8), chunksize=1)
    assert rc.wait([ar], progress=True)
    assert "plait: wait: 8/8 tasks done" in capsys.readouterr().err
    rc.load_balanced_view().map_sync(abs, range(8))  # by default: none outside IPython
    assert capsys.readouterr().err == ""
    view = rc.load_balanced_view()  # the blocking calls of a view take it too
    assert view.map_sync(abs, range(4), chunksize=1, progress=True) == [0, 1, 2, 3]
    assert "plait: abs: 4/4 tasks done" in capsys.readouterr().err
    assert view.map(abs, range(5), block=True, chunksize=1, progress=True) == list(range(5))
    assert "plait: abs: 5/5 tasks done" in capsys.readouterr().err
    assert view.wait(progress=True)  # (this view's tasks)
    assert "plait: wait: 9/9 tasks done" in capsys.readouterr().err


def test_a_tqdm_bar_in_a_terminal(rc, capsys, monkeypatch):
    from plait.kernel.client import _progress

    monkeypatch.setattr(_progress, "_terminal", lambda: True)
    ar = rc.load_balanced_view().map_async(abs, range(6), chunksize=1)
    ar.get(progress=True)
    err = capsys.readouterr().err
    assert "6/6" in err and "100%" in err  # tqdm's bar, finished
    ar = rc.load_balanced_view().map_async(abs, range(3), chunksize=1)
    ar.get()
    ar.wait_interactive()  # (finished already: its bar shows finished)
    assert "3/3" in capsys.readouterr().err


def test_in_ipython_a_long_wait_shows_its_bar(rc, capsys, monkeypatch, tmp_path):
    from plait.kernel.client import _progress

    monkeypatch.setattr(_progress, "_shell", lambda: "TerminalInteractiveShell")
    assert rc[0].apply_sync(abs, -2) == 2  # shorter than PROGRESS_AFTER: nothing shows
    assert capsys.readouterr().err == ""
    with opened_once_a_bar_shows(monkeypatch, tmp_path) as (gate, shown):
        assert rc.load_balanced_view().apply_async(gate.waiter()).get(timeout=30) == "go"
    assert shown.is_set() and "1/1 tasks done" in capsys.readouterr().err


def test_cancel_aborts_and_says_it_could_not_stop_a_started_future(rc, tmp_path):
    gate = Gate(tmp_path)
    ar = rc.load_balanced_view().apply_async(gate.waiter())
    assert ar.cancel() is False
    with pytest.raises((error.TaskAborted, ipp.RemoteError)):
        ar.get(timeout=30)
    assert not ar.cancelled()


def test_records_past_a_megabyte_arrive(rc):
    # a value inline (under the reply budget) and what the task printed: 1.2 MB in all
    ar = rc[0].apply_async(lambda: print("y" * 800_000) or b"x" * 400_000)
    assert len(ar.get(timeout=60)) == 400_000
    assert ar.stdout.startswith("y" * 400_000) and "characters of stdout cut" in ar.stdout
    values = rc[:].apply_sync(lambda: b"x" * 400_000)  # several together, past 1 MiB
    assert [len(v) for v in values] == [400_000] * 4
