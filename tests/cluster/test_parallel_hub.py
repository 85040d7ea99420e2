"""The hub over real processes: every task of every client recorded, fetched by
other clients, queried, purged, kept across a controller restart (SQLite),
and the ``--db memory`` / ``--db none`` alternatives.
"""

from __future__ import annotations

import datetime
import sys

import cloudpickle
import pytest

import plait.parallel as ipp
from plait.parallel import error
from support.cluster import Gate

cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def rc(cluster4):
    client = cluster4.rc()
    yield client
    client.close()


@pytest.fixture(scope="module")
def rc2(cluster4):
    """A second client of the same cluster."""
    client = cluster4.rc()
    yield client
    client.close()


def shout(word):
    print(word.upper())
    return word * 2


def fail():
    raise RuntimeError("no luck")


def test_a_second_client_gets_the_first_ones_result(rc, rc2):
    ar = rc.load_balanced_view().apply_async(shout, "hub")
    assert ar.get() == "hubhub"
    theirs = rc2.get_result(ar.msg_ids[0])
    assert isinstance(theirs, ipp.AsyncHubResult)
    assert theirs.get() == "hubhub"
    assert theirs.metadata.engine_id == ar.engine_id
    assert theirs.metadata.stdout == "HUB\n"
    assert theirs.metadata.status == "ok"
    assert theirs.metadata.completed == ar.metadata.completed


def test_a_second_client_waits_for_a_pending_result(rc, rc2, tmp_path):
    gate = Gate(tmp_path)
    ar = rc.load_balanced_view().apply_async(gate.waiter())
    ar.wait_for_send()  # (submissions leave in batches: make sure the hub has it)
    theirs = rc2.get_result(ar.msg_ids)
    assert not theirs.ready()
    assert rc2.result_status(ar.msg_ids) == {"pending": ar.msg_ids, "completed": []}
    gate.open()
    assert theirs.get() == ["go"]
    assert rc2.result_status(ar.msg_ids) == {"pending": [], "completed": ar.msg_ids}


def test_a_failure_fetched_from_the_hub(rc, rc2):
    ar = rc[0].apply_async(fail)
    with pytest.raises(error.RemoteError, match="no luck"):
        ar.get()
    theirs = rc2.get_result(ar.msg_ids[0])
    with pytest.raises(error.RemoteError, match="no luck"):
        theirs.get()
    assert theirs.metadata.status == "error"
    assert theirs.metadata.pyerr.ename == "RuntimeError"


def test_get_result_of_ones_own_tasks_is_an_async_result(rc, rc2, tmp_path):
    """As ipyparallel answers: a task this client submitted, finished or still
    running, comes back as a plain AsyncResult sharing its metadata; one it does
    not keep (purged locally, or another client's) is fetched from the hub."""
    lview = rc.load_balanced_view()
    done = lview.apply_async(shout, "own")
    assert done.get() == "ownown"
    mine = rc.get_result(done.msg_ids[0])
    assert type(mine) is ipp.AsyncResult
    assert mine.ready() and mine.get() == "ownown"
    assert mine.metadata.stdout == "OWN\n" and mine.engine_id == done.engine_id

    failed = rc[0].apply_async(fail)
    with pytest.raises(error.RemoteError, match="no luck"):
        failed.get()
    with pytest.raises(error.RemoteError, match="no luck"):
        rc.get_result(failed.msg_ids).get()

    gate = Gate(tmp_path)
    running = lview.apply_async(gate.waiter())
    followed = rc.get_result(running.msg_ids)
    assert type(followed) is ipp.AsyncResult and not followed.ready()
    gate.open()
    assert followed.get(timeout=30) == ["go"]
    assert running.get() == "go"

    theirs = rc2.load_balanced_view().apply_async(shout, "theirs")
    theirs.get()
    mixed = rc.get_result([done.msg_ids[0], theirs.msg_ids[0]])
    assert isinstance(mixed, ipp.AsyncHubResult)
    assert mixed.get() == ["ownown", "theirstheirs"]

    rc.purge_local_results(done)
    again = rc.get_result(done.msg_ids[0])
    assert isinstance(again, ipp.AsyncHubResult) and again.get() == "ownown"


def test_result_status_with_results(rc, rc2):
    ar = rc[1].apply_async(shout, "x")
    ar.get()
    status = rc2.result_status(ar.msg_ids, status_only=False)
    assert status["completed"] == ar.msg_ids
    assert status[ar.msg_ids[0]] == "xx"
    with pytest.raises(error.InvalidTaskID, match="never submitted, or purged"):
        rc2.result_status([rc._msg_id(10 ** 9)])


def test_history_results_metadata_of_the_client(rc):
    view = rc[:]
    ar = view.apply_async(shout, "m")
    ar.get()
    assert rc.history[-4:] == ar.msg_ids
    assert [rc.results[m] for m in ar.msg_ids] == ["mm"] * 4
    assert [rc.metadata[m].engine_id for m in ar.msg_ids] == [0, 1, 2, 3]
    assert view.history[-4:] == ar.msg_ids


def test_hub_history_holds_every_clients_tasks_in_order(rc, rc2):
    mine = rc[0].apply_async(shout, "a")
    mine.wait_for_send()  # (in the order they reached the controller)
    theirs = rc2[0].apply_async(shout, "b")
    rc.wait(mine)
    rc2.wait(theirs)
    history = rc.hub_history()
    assert history == rc2.hub_history()
    assert history.index(mine.msg_ids[0]) < history.index(theirs.msg_ids[0])


def test_db_query_with_mongo_operators(rc):
    view = rc.load_balanced_view()
    before = datetime.datetime.now()
    ars = [view.apply_async(shout, w) for w in "abcdef"]
    rc.wait(ars)
    ids = [ar.msg_ids[0] for ar in ars]
    found = rc.db_query({"msg_id": {"$in": ids}}, keys=["msg_id", "engine_id", "stdout"])
    assert sorted(r["msg_id"] for r in found) == sorted(ids)
    assert set(found[0]) == {"msg_id", "engine_id", "stdout"}
    assert sorted(r["stdout"] for r in found) == [f"{w.upper()}\n" for w in "abcdef"]
    recent = rc.db_query({"submitted": {"$gte": before}, "msg_id": {"$nin": ids[:2]}},
                         keys=["msg_id", "submitted"])
    assert sorted(r["msg_id"] for r in recent) == sorted(ids[2:])
    assert all(isinstance(r["submitted"], datetime.datetime) for r in recent)
    engine = ars[0].engine_id
    on_engine = rc.db_query({"msg_id": {"$in": ids}, "engine_id": {"$ne": engine}},
                            keys=["engine_id"])
    assert all(r["engine_id"] != engine for r in on_engine)
    assert rc.db_query({"completed": {"$lt": before}, "msg_id": {"$in": ids}}) == []


def test_bad_queries_get_a_clear_error(rc):
    with pytest.raises(error.QueryError, match=r"\$regexp|operator"):
        rc.db_query({"stdout": {"$regexp": "x"}})
    with pytest.raises(error.QueryError, match="colour"):
        rc.db_query({"colour": "red"})
    with pytest.raises(TypeError, match="dict"):
        rc.db_query("engine_id == 1")
    assert rc[0].apply_sync(shout, "still") == "stillstill"


def test_purge_results(rc, rc2):
    ar = rc[0].apply_async(shout, "p")
    ar.get()
    rc.purge_results(ar.msg_ids)
    with pytest.raises(error.InvalidTaskID, match="purged"):
        rc2.get_result(ar.msg_ids[0])
    with pytest.raises(error.InvalidTaskID, match="purged"):  # here too, as ipyparallel
        rc.get_result(ar.msg_ids[0])
    assert ar.msg_ids[0] not in rc.hub_history() and ar.msg_ids[0] not in rc.results
    assert ar.get() == "pp"  # what the AsyncResult holds is still there
    assert rc.wait(ar.msg_ids) is True  # its own, purged: done, as ipyparallel says
    with pytest.raises(error.InvalidTaskID):  # another client's, purged: unknown
        rc2.wait(ar.msg_ids)

    kept = rc[0].apply_async(shout, "k")
    kept.get()
    rc.purge_hub_results(kept)  # the hub only: the client still has it
    with pytest.raises(error.InvalidTaskID, match="purged"):
        rc2.get_result(kept.msg_ids[0])
    assert rc.get_result(kept.msg_ids[0]).get() == "kk"


def test_purging_a_pending_task_is_refused(rc, tmp_path):
    gate = Gate(tmp_path)
    ar = rc[0].apply_async(gate.waiter())
    try:
        with pytest.raises(ValueError, match="unfinished"):
            rc.purge_results(ar.msg_ids)
    finally:
        gate.open()
    assert ar.get() == "go"


def test_purge_local_results(rc):
    ar = rc[0].apply_async(shout, "l")
    ar.get()
    rc.purge_local_results(ar.msg_ids)
    assert ar.msg_ids[0] not in rc.results
    assert rc.get_result(ar.msg_ids[0]).get() == "ll"  # the hub still has it


def test_queue_status_counts(rc):
    before = rc.queue_status()[2]["completed"]
    rc[2].apply_sync(shout, "q")
    after = rc.queue_status()
    assert after[2]["completed"] == before + 1
    assert after["unassigned"] == 0


def test_queue_status_counts_each_direct_request_once(rc, tmp_path):
    gate = Gate(tmp_path)
    running = rc[1].apply_async(gate.waiter())
    try:
        waiting = rc[1].apply_async(abs, -4)  # behind it, on the same engine
        for _ in range(500):  # (each look a round trip: until the request has arrived)
            verbose = rc.queue_status(verbose=True)[1]
            if waiting.msg_ids[0] in verbose["queue"]:
                break
        # the engine's direct requests, each once (not also the batch carrying it)
        assert verbose["queue"] == running.msg_ids + waiting.msg_ids
        assert verbose["tasks"] == [] and rc.queue_status()[1]["queue"] == 2
    finally:
        gate.open()
    assert running.get(timeout=30) == "go" and waiting.get(timeout=30) == 4


def test_unknown_msg_ids(rc):
    with pytest.raises(error.InvalidTaskID):
        rc.get_result(rc._msg_id(123456789))
    with pytest.raises(ValueError, match="not a msg_id"):
        rc.get_result("12345")
    with pytest.raises(Exception, match="no task|never submitted"):
        rc.resubmit(rc._msg_id(123456789))


def test_purge_all_then_the_hub_is_empty(cluster_factory):
    c = cluster_factory(1)
    with c.rc() as rc:
        rc[0].apply_sync(shout, "z")
        assert len(rc.hub_history()) == 1
        rc.purge_results("all")
        assert rc.hub_history() == []


# -- the stores ---------------------------------------------------------------------------------
def test_results_survive_a_controller_restart(cluster_factory):
    c = cluster_factory(1)
    with c.rc() as rc:
        ar = rc[0].apply_async(shout, "kept")
        ar.get()
        old = ar.msg_ids[0]
    c.stop()
    c.start()
    with c.rc() as rc:
        back = rc.get_result(old)
        assert back.get() == "keptkept"
        assert back.metadata.stdout == "KEPT\n"
        new = rc[0].apply_async(shout, "new")
        new.get()
        assert new.msg_ids[0] != old  # ids go on after the old run's
        assert rc.get_result(old).get() == "keptkept"
        assert rc.hub_history() == [old, new.msg_ids[0]]


def test_memory_store(cluster_factory):
    c = cluster_factory(1, extra=["--db", "memory"])
    with c.rc() as rc, c.rc() as other:
        ar = rc[0].apply_async(shout, "mem")
        ar.get()
        assert other.get_result(ar.msg_ids[0]).get() == "memmem"
        assert other.db_query({"msg_id": ar.msg_ids[0]}, ["stdout"]) == [
            {"msg_id": ar.msg_ids[0], "stdout": "MEM\n"}]


def test_no_store_keeps_nothing_and_says_so(cluster_factory):
    c = cluster_factory(1, extra=["--db", "none"])
    with c.rc() as rc, c.rc() as other:
        ar = rc[0].apply_async(shout, "gone")
        assert ar.get() == "gonegone"  # the client that submitted gets its results
        with pytest.raises(error.InvalidTaskID, match="--db none"):
            other.get_result(ar.msg_ids[0])


def test_an_unknown_store_is_refused(tmp_path):
    from support.cluster import make_env, run_cmd

    proc = run_cmd(["ipcontroller", "--db", "postgres"], make_env(tmp_path / "p"),
                   check=False, timeout=30)
    assert proc.returncode != 0
    assert "sqlite" in proc.stderr and "postgres" in proc.stderr


# -- large results --------------------------------------------------------------------------
def big(n):
    import numpy

    return numpy.full(n, 7.0)


def _rss_mb(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_large_results_are_kept_on_disk_for_every_client_and_a_restart(cluster_factory):
    pytest.importorskip("numpy")
    c = cluster_factory(1)
    keep = c.plait_dir / "profile_default" / "db" / "blobs"
    with c.rc() as rc, c.rc() as other:
        ar = rc[0].apply_async(big, 400_000)  # 3.2 MB: beyond what travels inline
        assert ar.get().sum() == 2_800_000.0
        assert other.get_result(ar.msg_ids[0]).get().sum() == 2_800_000.0
        assert rc.get_result(ar.msg_ids[0]).get().shape == (400_000,)  # read again
        kept = ar.msg_ids[0]
    c.stop()  # (a controller that stops writes what it keeps first)
    assert len(list(keep.iterdir())) == 1
    c.start()
    with c.rc() as rc:
        assert rc.get_result(kept).get().sum() == 2_800_000.0
        rc.purge_results([kept])
        with pytest.raises(error.InvalidTaskID):
            rc.get_result(kept)
    c.stop()
    assert list(keep.iterdir()) == []


def test_controller_memory_stays_bounded_with_many_large_results(cluster_factory):
    pytest.importorskip("numpy")
    c = cluster_factory(1)
    controller = c.state()["controller"]
    with c.rc() as rc:
        lview = rc.load_balanced_view()
        lview.apply_sync(big, 400_000)
        before = _rss_mb(controller)
        for _ in range(5):  # 40 results of 3.2 MB: 128 MB in all
            ars = [lview.apply_async(big, 400_000) for _ in range(8)]
            rc.wait(ars)
            assert all(ar.get().shape == (400_000,) for ar in ars)
            rc.purge_local_results("all")
        grown = _rss_mb(controller) - before
        assert grown < 64, f"the controller grew by {grown:.0f} MB for 128 MB of results"
        assert len(rc.db_query({"status": "succeeded"}, ["msg_id"])) == 41


def test_purge_all_removes_the_kept_results(cluster_factory):
    pytest.importorskip("numpy")
    c = cluster_factory(1)
    keep = c.plait_dir / "profile_default" / "db" / "blobs"
    with c.rc() as rc:
        ar = rc[0].apply_async(big, 400_000)
        ar.get()
        rc.purge_results("all")
        with pytest.raises(error.InvalidTaskID):
            rc.get_result(ar.msg_ids[0])
    c.stop()
    assert list(keep.iterdir()) == []


def _len(data):
    return len(data)


def test_tasks_the_hub_cannot_write_to_disk_run_and_the_client_is_warned(cluster_factory):
    """A full disk (here: the controller's file-size limit, set with prlimit) fails
    the hub's writes: the tasks still run and give their results, the controller
    lives on, and the clients are warned that those tasks were not kept on disk."""
    import shutil
    import subprocess
    import warnings

    from plait.kernel import client

    if shutil.which("prlimit") is None:
        pytest.skip("prlimit (util-linux) is not installed")
    c = cluster_factory(1)
    db = c.plait_dir / "profile_default" / "db"
    with warnings.catch_warnings():  # (later calls within the minute are told too)
        warnings.simplefilter("ignore", error.PlaitWarning)
        with c.rc() as rc:
            lv = rc.load_balanced_view()
            rc.wait([lv.apply_async(_len, b"") for _ in range(3)])
            biggest = max(p.stat().st_size for p in db.iterdir() if p.is_file())
            subprocess.run(["prlimit", f"--pid={c.state()['controller']}",
                            f"--fsize={biggest + 300_000}"], check=True)
            told = []
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                ars = [lv.apply_async(_len, b"y" * 200_000) for _ in range(6)]
                ars[-1].wait_for_send()  # (one-way submissions: told when confirmed)
                assert [ar.get(timeout=60) for ar in ars] == [200_000] * 6
            told += [str(w.message) for w in caught if issubclass(w.category, error.PlaitWarning)]
            assert told, "the plait.parallel client was not warned"
            tc = c.tc()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                ids = [tc.run(client.MapTask(_len, args=(b"x" * 200_000,))) for _ in range(6)]
                tc.barrier(ids)
                assert [tc.get_task_result(i).results for i in ids] == [200_000] * 6
            kernel = [str(w.message) for w in caught if issubclass(w.category, error.PlaitWarning)]
            assert kernel, "the TaskClient was not warned"
            told += kernel
            assert all("not kept on disk" in t and "would be lost if the controller died" in t
                       for t in told)
            assert any("disk I/O error" in t for t in told), told
            assert rc[:].apply_sync(_len, b"ok") == [2]  # the controller lives on
    log = next((c.plait_dir / "profile_default" / "log").glob("ipcontroller*.log")).read_text()
    assert "submitted tasks are not on disk" in log
