"""A task farm with engine properties: the Task interface's way of sending each
task where it can run.

The engines announce what they have: here half of them say they have a
"GPU" and a memory size (``mec.set_properties``).  The farm then runs three
kinds of task through one TaskClient: plain ones (any engine), ones that
``depend`` on a GPU, and ones that need more memory than any engine has
until one gets more (their ``depend`` holds them ``scheduled``; the
controller re-examines them when the properties change).  It prints where
each kind ran, and writes ``task_farm.png`` (the tasks each engine ran, by
kind) into ``--out``::

    python examples/task_farm.py                  # 4 engines, 40 tasks of each kind
    python examples/task_farm.py -n 2 --tasks 6 --out /tmp/farm

Needs matplotlib.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import plait.parallel as ipp
from plait.kernel import client


def has_gpu(properties: dict) -> bool:
    """A task's ``depend``: the engine says it has a GPU."""
    return bool(properties.get("gpu"))


def has_memory(properties: dict) -> bool:
    """A task's ``depend``: the engine has at least 64 GiB."""
    return properties.get("memory_gib", 0) >= 64


def work(kind: str, i: int) -> str:
    """A task of the farm: which kind it was and which engine ran it."""
    from plait.kernel.engine import get_interpreter

    return f"{kind} {i} on {get_interpreter().engine_id}"


def plot(ran: dict[str, Counter], engines: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    bottom = [0] * len(engines)
    for kind, counts in ran.items():
        heights = [counts.get(e, 0) for e in engines]
        ax.bar([str(e) for e in engines], heights, bottom=bottom, label=kind)
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    ax.set_xlabel("engine")
    ax.set_ylabel("tasks run")
    ax.set_title("Where each kind of task ran")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-n", type=int, default=4, help="engines (default 4, at least 2)")
    p.add_argument("--tasks", type=int, default=40, help="tasks of each kind (default 40)")
    p.add_argument("--out", type=Path, default=Path("."), help="where the PNG goes")
    args = p.parse_args(argv)
    if args.n < 2:
        p.error("-n must be at least 2: half the engines have a GPU")
    args.out.mkdir(parents=True, exist_ok=True)
    with ipp.Cluster(n=args.n):  # (its profile's clients: the kernel generation's)
        mec = client.MultiEngineClient()
        tc = client.TaskClient()
        engines = mec.get_ids()
        gpus = engines[: len(engines) // 2]
        mec.set_properties({"gpu": True, "memory_gib": 32}, targets=gpus)
        mec.set_properties({"gpu": False, "memory_gib": 16},
                           targets=[e for e in engines if e not in gpus])
        ids = {kind: [tc.run(client.MapTask(work, args=(kind, i), depend=depend))
                      for i in range(args.tasks)]
               for kind, depend in (("plain", None), ("gpu", has_gpu),
                                    ("big memory", has_memory))}
        tc.barrier(ids["plain"] + ids["gpu"])
        waiting = tc.queue_status()["scheduled"]
        print(f"{waiting} big-memory tasks wait: no engine has 64 GiB")
        mec.set_properties({"memory_gib": 128}, targets=engines[-1])  # more memory for one
        ran: dict[str, Counter] = {}
        for kind, taskids in ids.items():
            results = tc.get_task_results(taskids, block=True)
            ran[kind] = Counter(r.engineid for r in results)
            values = [r.results for r in results]
            assert values == [f"{kind} {i} on {r.engineid}" for i, r in enumerate(results)]
        assert set(ran["gpu"]) <= set(gpus), "a GPU task ran on an engine without one"
        assert set(ran["big memory"]) == {engines[-1]}
        for kind, counts in ran.items():
            print(f"{kind}: {sum(counts.values())} tasks, on engines {sorted(counts)}")
        plot(ran, engines, args.out / "task_farm.png")
    print(f"wrote {args.out / 'task_farm.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
