"""A DAG of tasks with graph dependencies: the reference's dependencies demo.

A random directed acyclic graph (networkx) stands for a workflow: each node
is a task that may start only once the tasks of its incoming edges have
finished.  Each task is submitted with ``after=`` those tasks; the
scheduler holds it until they are done.  The script then checks, from each
result's metadata, that no task started before its parents completed, and
draws the graph and when each task ran::

    python examples/dag_dependencies.py                # 4 engines, 32 nodes
    python examples/dag_dependencies.py -n 2 --nodes 12 --out /tmp/dag

It writes ``dag.png`` (the graph, each node placed at the time its task
started) and ``dag_timeline.png`` (one bar per task, on its engine's row)
into ``--out``.  Needs networkx and matplotlib.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import networkx as nx

import plait.parallel as ipp


def random_dag(nodes: int, edges: int, seed: int) -> nx.DiGraph:
    """A random DAG of ``nodes`` nodes and (at most) ``edges`` edges: each edge goes
    from a lower-numbered node to a higher one, so there is no cycle."""
    rng = random.Random(seed)
    graph = nx.DiGraph()
    graph.add_nodes_from(range(nodes))
    while graph.number_of_edges() < min(edges, nodes * (nodes - 1) // 2):
        a, b = sorted(rng.sample(range(nodes), 2))
        graph.add_edge(a, b)
    assert nx.is_directed_acyclic_graph(graph)
    return graph


def work(seconds: float) -> float:
    """A task of the workflow: it takes ``seconds``."""
    import time

    time.sleep(seconds)
    return seconds


def submit_jobs(view: ipp.LoadBalancedView, graph: nx.DiGraph, rng: random.Random) -> dict:
    """Submit each node's task after its parents' (in topological order); the
    AsyncResults by node."""
    results: dict[int, ipp.AsyncResult] = {}
    for node in nx.topological_sort(graph):
        parents = [results[p] for p in graph.predecessors(node)]
        with view.temp_flags(after=parents):
            results[node] = view.apply_async(work, rng.uniform(0.02, 0.1))
    return results


def validate_tree(graph: nx.DiGraph, results: dict) -> None:
    """No task started before every one of its parents had completed."""
    for node in graph:
        started = results[node].metadata.started
        for parent in graph.predecessors(node):
            completed = results[parent].metadata.completed
            assert started >= completed, f"task {node} started before its parent {parent} ended"


def plot(graph: nx.DiGraph, results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = min(r.metadata.started for r in results.values())
    start = {n: (results[n].metadata.started - t0).total_seconds() for n in graph}
    end = {n: (results[n].metadata.completed - t0).total_seconds() for n in graph}
    engine = {n: results[n].metadata.engine_id for n in graph}
    pos = {node: (start[node], node) for node in graph}  # x: when it started
    fig, ax = plt.subplots(figsize=(8, 5))
    nx.draw(graph, pos, ax=ax, node_size=300, node_color=[engine[n] for n in graph],
            cmap="tab10", with_labels=True, font_size=7, arrowsize=8, edge_color="0.6")
    ax.set_title("The DAG: each task placed at the time it started, coloured by engine")
    ax.set_axis_on()
    ax.tick_params(left=True, labelleft=True, bottom=True, labelbottom=True)
    ax.set_ylabel("task")
    ax.set_xlabel("seconds since the first task started")
    fig.tight_layout()
    fig.savefig(out / "dag.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 3.5))
    for node in graph:
        ax.barh(engine[node], end[node] - start[node], left=start[node], height=0.6,
                color=plt.get_cmap("tab10")(engine[node] % 10), edgecolor="black", lw=0.3)
    ax.set_yticks(sorted(set(engine.values())))
    ax.set_ylabel("engine")
    ax.set_xlabel("seconds since the first task started")
    ax.set_title("When each task ran")
    fig.tight_layout()
    fig.savefig(out / "dag_timeline.png", dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-n", type=int, default=4, help="engines (default 4)")
    p.add_argument("--nodes", type=int, default=32, help="tasks (default 32)")
    p.add_argument("--edges", type=int, help="dependencies (default twice the nodes)")
    p.add_argument("--seed", type=int, default=1, help="of the random graph (default 1)")
    p.add_argument("--out", type=Path, default=Path("."), help="where the PNGs go")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    graph = random_dag(args.nodes, args.edges or 2 * args.nodes, args.seed)
    with ipp.Cluster(n=args.n) as rc:
        results = submit_jobs(rc.load_balanced_view(), graph, random.Random(args.seed))
        rc.wait(list(results.values()))
        for ar in results.values():
            ar.get()  # (a failure would be raised here)
        validate_tree(graph, results)
        longest = nx.dag_longest_path_length(graph) + 1
        print(f"{graph.number_of_nodes()} tasks, {graph.number_of_edges()} dependencies, "
              f"longest path {longest} tasks, on {len(rc.ids)} engines")
        print("no task started before its parents had completed")
        plot(graph, results, args.out)
    print(f"wrote {args.out / 'dag.png'} and {args.out / 'dag_timeline.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
