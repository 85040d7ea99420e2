"""plait.wire.pickling: cloudpickle's output, faster, and never stale."""

from __future__ import annotations

import collections
import os
import pickle
import sys

import cloudpickle
import pytest

from plait.wire import pickling

# Functions of this module travel by value, as those of a notebook do.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

SCALE = 2
TABLE = [1, 2, 3]


def scaled(x):
    return x * SCALE


def from_table(i):
    return TABLE[i]


def uses_os():
    return os.sep


def roundtrip(obj):
    return pickle.loads(pickling.dumps(obj))


def test_a_function_by_value_runs_after_the_trip():
    assert roundtrip(scaled)(3) == 6
    assert roundtrip((scaled, (1, 2), {"k": None}))[0](5) == 10


def test_the_cache_is_used_while_nothing_changed():
    first = pickling.function_bytes(scaled)
    assert pickling.function_bytes(scaled) is first


def test_a_changed_global_atom_is_seen():
    global SCALE
    try:
        assert roundtrip(scaled)(1) == 2
        SCALE = 10
        assert roundtrip(scaled)(1) == 10
    finally:
        SCALE = 2


def test_a_mutable_global_is_pickled_anew_each_time():
    assert roundtrip(from_table)(0) == 1
    TABLE[0] = 99
    try:
        assert roundtrip(from_table)(0) == 99
    finally:
        TABLE[0] = 1
    assert pickling._fingerprint(from_table) is None


def test_closures_and_defaults():
    def make(n):
        return lambda x, k=1: x + n + k

    add2, add3 = make(2), make(3)
    assert roundtrip(add2)(1) == 4
    assert roundtrip(add3)(1) == 5
    box = []
    assert roundtrip(lambda: box)() == []
    assert pickling._fingerprint(lambda: box) is None


def test_a_changed_default_or_attribute_is_seen():
    def f(x=1):
        return x

    assert roundtrip(f)() == 1
    f.__defaults__ = (7,)
    assert roundtrip(f)() == 7
    f.note = "attributes could be anything"
    assert pickling._fingerprint(f) is None


def test_modules_by_reference_are_fine():
    assert roundtrip(uses_os)() == os.sep
    assert pickling._fingerprint(uses_os) is not None


def test_classes_and_instances_of_main_classes_go_to_cloudpickle():
    class Local:
        def __init__(self, v):
            self.v = v

    obj = roundtrip(Local(4))
    assert obj.v == 4
    assert roundtrip(Local)(5).v == 5


def test_importable_classes_and_builtins_go_by_reference():
    counter = roundtrip(collections.Counter("aab"))
    assert counter == {"a": 2, "b": 1}
    assert roundtrip(abs)(-3) == 3
    assert roundtrip(os.path.join)("a", "b") == os.path.join("a", "b")


def test_out_of_band_buffers():
    np = pytest.importorskip("numpy")
    a = np.arange(1000.0)
    buffers = []
    data = pickling.dumps({"a": a}, buffer_callback=buffers.append)
    assert len(buffers) == 1
    back = pickle.loads(data, buffers=buffers)
    assert (back["a"] == a).all()


def test_what_the_standard_pickler_refuses_still_pickles():
    gen = (i for i in range(3))
    with pytest.raises(TypeError, match="generator"):
        pickling.dumps(gen)  # cloudpickle refuses generators too
    lock_free = roundtrip(lambda: {1, 2})()
    assert lock_free == {1, 2}


def test_unpicklable_things_raise():
    import threading

    with pytest.raises(TypeError):
        pickling.dumps(threading.Lock())
