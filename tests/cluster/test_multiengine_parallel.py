"""scatter, gather, map, mapper and @parallel against a real 4-engine cluster."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from plait.kernel import client
from plait.wire.serialize import INLINE_LIMIT


def test_scatter_and_gather_as_in_the_guide(mec):
    assert mec.scatter("a", range(16)) == [None, None, None, None]
    assert [r["stdout"] for r in mec.execute("print(a)")] == [
        "[0, 1, 2, 3]\n", "[4, 5, 6, 7]\n", "[8, 9, 10, 11]\n", "[12, 13, 14, 15]\n",
    ]
    assert mec.gather("a") == list(range(16))


def test_parallel_list_comprehension(mec):
    mec.scatter("x", range(64))
    mec.execute("y = [i**10 for i in x]")
    assert mec.gather("y") == [i**10 for i in range(64)]


def test_parts_differ_in_length_by_at_most_one(mec):
    mec.scatter("a", list(range(10)))
    assert [len(part) for part in mec.pull("a")] == [3, 3, 2, 2]
    mec.scatter("b", range(2))  # fewer items than engines
    assert mec.pull("b") == [[0], [1], [], []]
    assert mec.gather("b") == [0, 1]


def test_scatter_keeps_tuples_and_strings(mec):
    mec.scatter("t", tuple(range(8)))
    assert mec.pull("t") == [(0, 1), (2, 3), (4, 5), (6, 7)]
    assert mec.gather("t") == tuple(range(8))
    mec.scatter("s", "abcdefgh")
    assert mec.gather("s") == "abcdefgh"


def test_scatter_flatten(mec):
    mec.scatter("x", range(4), flatten=True)
    assert mec.pull("x") == [0, 1, 2, 3]
    assert mec.gather("x", flatten=True) == [0, 1, 2, 3]


def test_scatter_on_chosen_targets_in_their_order(mec):
    mec.scatter("a", range(6), targets=[3, 1])
    assert mec.pull("a", targets=[1, 3]) == [[3, 4, 5], [0, 1, 2]]
    assert mec.gather("a", targets=[3, 1]) == list(range(6))
    mec.scatter("one", range(3), targets=2)
    assert mec.pull("one", targets=2) == [[0, 1, 2]]
    with pytest.raises(ValueError, match="more than once"):
        mec.scatter("a", range(6), targets=[1, 1])


def test_scatter_and_gather_arrays(mec):
    x = np.arange(20, dtype=float).reshape(10, 2)
    mec.scatter("x", x)
    shapes = mec.execute("print(type(x).__name__, x.shape)")
    assert [r["stdout"] for r in shapes] == [
        "ndarray (3, 2)\n", "ndarray (3, 2)\n", "ndarray (2, 2)\n", "ndarray (2, 2)\n",
    ]
    back = mec.gather("x")
    assert isinstance(back, np.ndarray) and np.array_equal(back, x)


def test_scatter_and_gather_large_arrays_through_the_bulk_channel(mec):
    x = np.random.default_rng(1).random(4 * INLINE_LIMIT // 8 * 3)  # ~3 MB a part
    mec.scatter("x", x)
    assert mec.execute("s = float(x.sum())") and sum(mec.pull("s")) == pytest.approx(x.sum())
    back = mec.gather("x")
    assert back.dtype == x.dtype and np.array_equal(back, x)
    mec.execute("x = x * 2")
    assert np.array_equal(mec.gather("x"), x * 2)


def test_scatter_non_blocking(mec):
    pr = mec.scatter("a", range(8), block=False)
    assert pr.r == [None] * 4
    assert mec.gather("a", block=False).r == list(range(8))


def test_scatter_refuses_non_sequences_and_breaks_nothing(mec):
    for bad, message in (
        (5, "cannot partition an int"),
        ({"a": 1}, "it is a mapping"),
        ({1, 2}, "it has no order"),
        (iter([1, 2]), "an iterator has no length"),
    ):
        with pytest.raises(TypeError, match=message):
            mec.scatter("a", bad)
    with pytest.raises(ValueError, match="only the block distribution 'b'"):
        mec.scatter("a", range(4), dist="c")
    with pytest.raises(ValueError, match="not a valid Python name"):
        mec.scatter("not a name", range(4))
    assert mec.keys() == [[]] * 4
    with pytest.raises(client.CompositeError, match="NameError"):
        mec.gather("a")


def test_map_as_in_the_guide(mec):
    serial_result = list(map(lambda x: x**10, range(32)))
    parallel_result = mec.map(lambda x: x**10, range(32))
    assert serial_result == parallel_result
    big = mec.map(lambda x: x**10, range(10000))
    assert big == [x**10 for x in range(10000)]


def test_map_like_the_builtin(mec):
    assert mec.map(lambda a, b: a + b, [1, 2, 3], (10, 20, 30, 40)) == [11, 22, 33]
    assert mec.map(str.upper, "abc") == ["A", "B", "C"]
    assert mec.map(abs, range(-2, 0)) == [2, 1]  # fewer items than engines
    assert mec.map(abs, []) == []
    assert mec.map(lambda x: x * 2, (i for i in range(5))) == [0, 2, 4, 6, 8]
    assert mec.map(float, np.arange(6)) == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    with pytest.raises(TypeError, match="argument 2 is not iterable: a int"):
        mec.map(abs, 3)
    with pytest.raises(TypeError, match="not callable"):
        mec.map(3, [1])


def test_map_uses_the_engine_namespace_and_closures(mec):
    interactive: dict = {"__name__": "__main__"}  # as typed at a prompt or in a notebook
    exec("shift = lambda x: x + offset", interactive)
    mec.push({"offset": 100})
    assert mec.map(interactive["shift"], range(4)) == [100, 101, 102, 103]
    factor = 3
    assert mec.map(lambda x: x * factor, range(4)) == [0, 3, 6, 9]


def test_map_errors(mec):
    with pytest.raises(client.CompositeError) as info:
        mec.map(lambda x: 1 / x, range(8))
    assert [engine for engine, _, _ in info.value.elist] == [0]
    assert "[0:map]: ZeroDivisionError: division by zero" in str(info.value)
    lock = threading.Lock()
    with pytest.raises(client.SerializationError, match="map: cannot send the function"):
        mec.map(lambda x: lock, range(4))


def test_map_non_blocking_and_on_targets(mec):
    mec.block = False
    pr = mec.map(lambda x: x * x, range(6))
    assert isinstance(pr, client.PendingResult) and pr.r == [0, 1, 4, 9, 16, 25]
    assert mec.map(abs, []).r == []
    mec.block = True
    mec.targets = [1, 2]
    assert mec.map(lambda x: x, range(3)) == [0, 1, 2]
    mec.targets = "all"


def test_mapper_and_raw_map(mec):
    m = mec.mapper(targets=[0, 1], block=False)
    pr = m.map(lambda x, y: x * y, range(4), range(4))
    assert pr.r == [0, 1, 4, 9]
    assert mec.raw_map(pow, [range(4), [2] * 4]) == [0, 1, 4, 9]
    with pytest.raises(TypeError, match="takes the sequences in a list"):
        mec.raw_map(pow, range(4))
    with pytest.raises(ValueError, match="only the block distribution"):
        mec.mapper(dist="x")


def test_parallel_decorator(mec):
    @mec.parallel()
    def f(x):
        return 10.0 * x**4

    assert f(range(32)) == [10.0 * x**4 for x in range(32)]
    assert f.__name__ == "f"

    @mec.parallel(targets=[2, 3], block=False)
    def g(x, y):
        return x - y

    assert g([5, 6, 7], [1, 1, 1]).r == [4, 5, 6]
