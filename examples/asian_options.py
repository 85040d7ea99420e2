"""Monte Carlo pricing of Asian options, in parallel: the reference's second demo.

An Asian option pays on the average price of the stock over its life.  For
each strike price K and volatility sigma of a grid, a task simulates ``paths``
geometric Brownian motions of the stock and prices the Asian call and put
(the discounted mean payoffs of ``max(mean - K, 0)`` and ``max(K - mean, 0)``).
The tasks go to a load-balanced view; the same work is timed on one engine
too, for the speedup::

    python examples/asian_options.py                    # 4 engines, a 10 x 10 grid
    python examples/asian_options.py -n 2 --grid 4 --paths 2000 --out /tmp/opt

It prints the speedup table (engines, seconds, speedup) and writes the price
surfaces ``asian_call.png`` and ``asian_put.png`` into ``--out``.  Needs
numpy and matplotlib.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import plait.parallel as ipp

#: The stock today, the risk-free rate, the years to expiry and the time steps.
S0, RATE, YEARS, STEPS = 100.0, 0.05, 1.0, 100


def price_asian(strike: float, sigma: float, paths: int, seed: int) -> tuple[float, float]:
    """On an engine: the (call, put) prices of an Asian option, by Monte Carlo."""
    import numpy as np

    rng = np.random.default_rng(seed)
    dt = YEARS / STEPS
    steps = rng.standard_normal((paths, STEPS))
    log_paths = np.cumsum((RATE - 0.5 * sigma**2) * dt + sigma * np.sqrt(dt) * steps, axis=1)
    mean = (S0 * np.exp(log_paths)).mean(axis=1)
    discount = np.exp(-RATE * YEARS)
    call = discount * np.maximum(mean - strike, 0.0).mean()
    put = discount * np.maximum(strike - mean, 0.0).mean()
    return float(call), float(put)


def plot_surface(prices: np.ndarray, strikes: np.ndarray, sigmas: np.ndarray,
                 title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    contour = ax.contourf(strikes, sigmas, prices.T, levels=20, cmap="viridis")
    fig.colorbar(contour, ax=ax, label="price")
    ax.set_xlabel("strike price")
    ax.set_ylabel("volatility")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-n", type=int, default=4, help="engines (default 4)")
    p.add_argument("--grid", type=int, default=10, help="strikes and volatilities (10)")
    p.add_argument("--paths", type=int, default=20_000, help="paths per price (20,000)")
    p.add_argument("--out", type=Path, default=Path("."), help="where the PNGs go")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    strikes = np.linspace(90.0, 110.0, args.grid)
    sigmas = np.linspace(0.1, 0.4, args.grid)
    grid = [(float(k), float(s)) for k in strikes for s in sigmas]
    # the same paths for every strike of a volatility: prices move with the strike alone
    seeds = [j for _ in strikes for j in range(len(sigmas))]

    with ipp.Cluster(n=args.n) as rc:
        one = rc.load_balanced_view(targets=[rc.ids[0]])
        t0 = time.perf_counter()
        serial = one.map(price_asian, [k for k, _ in grid], [s for _, s in grid],
                         [args.paths] * len(grid), seeds, block=True, chunksize=1)
        serial_seconds = time.perf_counter() - t0
        view = rc.load_balanced_view()
        t0 = time.perf_counter()
        prices = view.map(price_asian, [k for k, _ in grid], [s for _, s in grid],
                          [args.paths] * len(grid), seeds, block=True, chunksize=1)
        parallel_seconds = time.perf_counter() - t0
        engines = len(rc.ids)
    assert prices == serial, "the same seeds gave other prices"
    calls = np.array([c for c, _ in prices]).reshape(args.grid, args.grid)
    puts = np.array([q for _, q in prices]).reshape(args.grid, args.grid)
    print(f"{len(grid)} prices (a {args.grid} x {args.grid} grid), {args.paths:,} paths each")
    print(f"{'engines':>8} {'seconds':>9} {'speedup':>8}")
    print(f"{1:>8} {serial_seconds:>9.2f} {1.0:>8.2f}")
    print(f"{engines:>8} {parallel_seconds:>9.2f} {serial_seconds / parallel_seconds:>8.2f}")
    k, s = args.grid // 2, args.grid // 2
    print(f"at K={strikes[k]:.1f}, sigma={sigmas[s]:.2f}: call {calls[k, s]:.3f}, "
          f"put {puts[k, s]:.3f}")
    # a call is worth less with a higher strike, a put more
    assert np.all(np.diff(calls, axis=0) <= 1e-9) and np.all(np.diff(puts, axis=0) >= -1e-9)
    plot_surface(calls, strikes, sigmas, "Asian call price", args.out / "asian_call.png")
    plot_surface(puts, strikes, sigmas, "Asian put price", args.out / "asian_put.png")
    print(f"wrote {args.out / 'asian_call.png'} and {args.out / 'asian_put.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
