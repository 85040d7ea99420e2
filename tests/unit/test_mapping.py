"""The one mapper and parallel function of both clients, and each client's map.

The Task client's ``map`` reads its sequences as the builtin ``map`` does
(together, stopping at the shortest); the MultiEngine client's cuts them
into blocks.  Both keep their own rules for bad input.
"""

from __future__ import annotations

import itertools
import warnings

import pytest

from plait.kernel import client
from plait.kernel.client._mapping import TaskMapper, TaskParallelFunction
from plait.kernel.client._taskmap import map_tasks
from plait.kernel.engine.shipped import map_chunk
from support.fakes import LocalTaskClient, fired


def tmap(function, *sequences, engines: int = 2, chunksize=None, **options):
    return fired(map_tasks(LocalTaskClient(engines), function, sequences, chunksize, options))


def test_task_map_reads_sequences_as_the_builtin_does():
    add = lambda a, b: a + b  # noqa: E731
    assert tmap(add, itertools.count(), [1, 2, 3]) == [1, 3, 5]  # an endless iterator
    rest = iter(range(5))
    assert tmap(add, [1, 2], rest) == [1, 3]
    assert list(rest) == [2, 3, 4]  # only what the builtin map would read
    assert tmap(int, memoryview(b"ab")) == [97, 98]
    assert tmap(abs, range(-50, 50), chunksize=7) == [abs(i) for i in range(-50, 50)]
    assert tmap(str, []) == []

    class OddSlices:  # iterates one way, slices another: iteration wins, as for map
        def __len__(self):
            return 3

        def __iter__(self):
            return iter([100, 101, 102])

        def __getitem__(self, index):
            raise ValueError("no slicing here")

    assert tmap(lambda x: x, OddSlices()) == [100, 101, 102]


def test_every_task_of_a_map_runs_the_one_shipped_helper():
    local = LocalTaskClient(engines=1)
    fired(map_tasks(local, abs, (range(-6, 0),), 2, {}))
    assert [task.function for task in local.runs] == [map_chunk] * 3
    assert [task.args[1:] for task in local.runs] == [((-6, -5),), ((-4, -3),), ((-2, -1),)]


@pytest.mark.parametrize("call, error, message", [
    (lambda: tmap(5, [1]), TypeError, "map needs a callable, not 5"),
    (lambda: tmap(abs), TypeError, "at least one sequence"),
    (lambda: tmap(abs, 3), TypeError, "'int' object is not iterable"),
    (lambda: tmap(abs, [1], chunksize=0, bogus=1), TypeError, "unknown map option"),
    (lambda: tmap(abs, [1], chunksize=0), ValueError, "chunksize must be an int >= 1"),
    (lambda: tmap(5, [1], bogus=1), TypeError, "needs a callable"),
])
def test_task_map_checks_its_arguments_in_order(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_a_mapper_keeps_its_options_as_attributes():
    class Client:
        def _map_with(self, func, sequences, options):
            return func, sequences, dict(options)

    mapper = client.Mapper(Client(), dist="b", targets=None, block=True)
    assert (mapper.dist, mapper.targets, mapper.block) == ("b", None, True)
    mapper.targets = [1]  # changes the option, as it did
    assert mapper.map(abs, [1]) == (abs, ([1],), {"dist": "b", "targets": [1], "block": True})
    assert repr(mapper) == "<Mapper dist='b' targets=[1] block=True>"
    with pytest.raises(AttributeError, match="no attribute 'chunksize'"):
        mapper.chunksize  # noqa: B018


def test_the_task_clients_old_classes_keep_their_signatures():
    class Client:
        def _map_with(self, func, sequences, options):
            return [func(*args) for args in zip(*sequences, strict=False)], options

    old = TaskMapper(Client(), 4, retries=1)
    assert old.chunksize == 4 and old.options == {"chunksize": 4, "retries": 1}
    assert isinstance(old, client.Mapper)
    with pytest.raises(TypeError, match="unknown map option"):
        TaskMapper(Client(), bogus=1)
    with pytest.raises(ValueError, match="chunksize"):
        TaskMapper(Client(), 0)
    pf = TaskParallelFunction(old, abs)
    assert pf.function is abs and pf([-1, -2]) == ([1, 2], {"chunksize": 4, "retries": 1})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        assert client.TaskMapper is TaskMapper
        assert client.TaskParallelFunction is TaskParallelFunction
        assert client.ConnectionError_ is client.PlaitConnectionError
