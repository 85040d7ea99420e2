"""Scatter/gather partitioning: block distribution, kinds of sequence, errors."""

from __future__ import annotations

from collections import deque

import numpy
import pytest

from plait.kernel.client._partition import bounds, join, partition, partitions


def test_range_is_scattered_as_lists_as_in_the_user_guide():
    assert [partition(range(16), 4, i) for i in range(4)] == [
        [0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15],
    ]
    assert join(partitions(range(16), 4)) == list(range(16))


def test_uneven_parts_put_the_extra_items_first():
    assert partitions(list(range(10)), 4) == [[0, 1, 2], [3, 4, 5], [6, 7], [8, 9]]
    assert partitions([1, 2], 4) == [[1], [2], [], []]
    assert partitions([], 3) == [[], [], []]


@pytest.mark.parametrize("length", [0, 1, 5, 16, 17, 63])
@pytest.mark.parametrize("n", [1, 2, 3, 4, 7])
def test_parts_join_back_and_differ_by_at_most_one(length, n):
    parts = partitions(list(range(length)), n)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
    assert join(parts) == list(range(length))


def test_tuples_and_strings_keep_their_type():
    assert partitions((1, 2, 3), 2) == [(1, 2), (3,)]
    assert join([(1, 2), (3,)]) == (1, 2, 3)
    assert partitions("abcde", 2) == ["abc", "de"]
    assert join(["abc", "de"]) == "abcde"
    assert join([b"ab", b"c"]) == b"abc"
    assert join([[1], (2, 3)]) == [1, 2, 3]


def test_numpy_parts_are_views():
    a = numpy.arange(20).reshape(10, 2)
    parts = partitions(a, 3)
    assert [p.shape for p in parts] == [(4, 2), (3, 2), (3, 2)]
    for p in parts:
        assert p.base is a.base or p.base is a
        assert numpy.shares_memory(p, a)
    gathered = join(parts)
    assert isinstance(gathered, numpy.ndarray)
    assert numpy.array_equal(gathered, a)


def test_other_sequences_are_sliced_or_listed():
    assert partition(deque(range(5)), 2, 1) == [3, 4]


def test_flatten_unwraps_single_items_and_join_wraps_them_back():
    assert partitions(range(4), 4, flatten=True) == [0, 1, 2, 3]
    assert partitions(range(5), 4, flatten=True) == [[0, 1], 2, 3, 4]
    assert partitions(range(2), 3, flatten=True) == [0, 1, []]
    assert join([[0, 1], 2, 3, 4], flatten=True) == [0, 1, 2, 3, 4]
    scattered = partitions(numpy.arange(3.0), 3, flatten=True)
    assert isinstance(scattered[0], numpy.float64)
    gathered = join(scattered, flatten=True)
    assert isinstance(gathered, numpy.ndarray) and gathered.tolist() == [0.0, 1.0, 2.0]


def test_join_of_scalars_without_flatten_says_what_to_do():
    with pytest.raises(TypeError, match=r"cannot join part 1: a int is not a sequence \(was it scattered with flatten=True"):
        join([[0], 1])
    with pytest.raises(TypeError, match="join needs a list of parts, not a int"):
        join(5)


@pytest.mark.parametrize(
    "seq, message",
    [
        (5, "cannot partition an int: a list, tuple, range, string or array is needed"),
        ({"a": 1}, r"cannot partition a dict: it is a mapping, not a sequence; pass a list such as list\(d.items\(\)\)"),
        ({1, 2}, r"cannot partition a set: it has no order; pass a list such as sorted\(s\)"),
        ((x for x in range(3)), r"cannot partition a generator: an iterator has no length; pass list\(...\) of it"),
        (numpy.float64(1.0), "cannot partition a float64"),
        (numpy.array(3), "cannot partition a 0-d array: it has no items"),
        (None, "cannot partition a NoneType"),
    ],
)
def test_non_sequences_are_refused(seq, message):
    with pytest.raises(TypeError, match=message):
        partition(seq, 2, 0)


def test_bad_counts_indices_and_distributions():
    with pytest.raises(ValueError, match="the number of parts must be a positive integer, not 0"):
        partition([1, 2], 0, 0)
    with pytest.raises(ValueError, match="the number of parts must be a positive integer, not 0"):
        partitions([1, 2], 0)
    with pytest.raises(IndexError, match=r"part index 4 is out of range for 4 parts \(0 to 3\)"):
        partition([1, 2], 4, 4)
    with pytest.raises(ValueError, match="unknown distribution 'c': only the block distribution 'b'"):
        partition([1, 2], 2, 0, dist="c")


def test_bounds():
    assert [bounds(10, 4, i) for i in range(4)] == [(0, 3), (3, 6), (6, 8), (8, 10)]
