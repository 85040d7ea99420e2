"""``benchmark``: how fast this cluster answers and moves data.

Part of the asynchronous MultiEngine client (and so of the blocking one).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import defer

from plait.kernel.client._base import asynchronous
from plait.kernel.engine.shipped import forget
from plait.wire.errors import PlaitError

#: Repetitions of each measurement.
LATENCY_RUNS = 20
PUSH_RUNS = 5
_NAME = "_plait_benchmark_data"


def _numpy() -> Any:
    try:
        import numpy
    except ImportError:  # pragma: no cover - numpy is optional
        return None
    return numpy


class BenchmarkMixin:
    """The ``benchmark`` method; relies on the client's public methods and ``_apply``."""

    get_ids: Callable[..., defer.Deferred]
    execute: Callable[..., defer.Deferred]
    push: Callable[..., defer.Deferred]
    _apply: Callable[..., defer.Deferred]

    @asynchronous
    @defer.inlineCallbacks
    def benchmark(self, push_size: int = 10000) -> Any:
        """Measure this cluster: command latency and push throughput.

        Latency: seconds for ``execute('pass')`` on one engine (``'one'``)
        and on all (``'all'``), the median of several runs.  Throughput:
        bytes per second pushing a float64 array of ``push_size`` items to
        one engine and to all (counting the bytes every engine receives).
        The variable pushed is removed afterwards; the engines' command
        numbers advance.  Returns ``{'engines', 'push_size', 'push_bytes',
        'latency': {'one', 'all'}, 'throughput': {'one', 'all'}}``.
        """
        if isinstance(push_size, bool) or not isinstance(push_size, int) or push_size < 0:
            raise ValueError(f"push_size must be a number of items >= 0, not {push_size!r}")
        ids = yield self.get_ids()
        if not ids:
            raise PlaitError("benchmark: there are no engines")
        numpy = _numpy()
        data = numpy.arange(push_size, dtype="float64") if numpy else bytes(8 * push_size)
        nbytes = 8 * push_size
        report: dict[str, Any] = {
            "engines": len(ids), "push_size": push_size, "push_bytes": nbytes,
            "latency": {}, "throughput": {},
        }
        for label, targets in (("one", ids[0]), ("all", ids)):
            times = []
            for _ in range(LATENCY_RUNS):
                start = time.perf_counter()
                yield self.execute("pass", targets=targets, block=True)
                times.append(time.perf_counter() - start)
            report["latency"][label] = statistics.median(times)
            times = []
            for _ in range(PUSH_RUNS):
                start = time.perf_counter()
                yield self.push({_NAME: data}, targets=targets, block=True)
                times.append(time.perf_counter() - start)
            count = 1 if label == "one" else len(ids)
            report["throughput"][label] = nbytes * count / statistics.median(times)
        yield self._apply("benchmark", forget, ([_NAME],), ids, True)
        return report
