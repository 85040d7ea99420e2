"""The digits of pi: how often each digit, and each pair of digits, occurs.

The reference's first parallel demo.  With 10,000 digits each digit occurs
about 1,000 times, with large fluctuations; with many more digits the
relative fluctuations shrink.  The digits are computed once (Chudnovsky's
series, in integers), cut into one block per engine, and each engine counts
the single digits and the two-digit pairs of its block; the client adds the
counts up (the pairs that straddle two blocks are counted here) and plots
them::

    python examples/pi_digits.py                 # 4 engines, 200,000 digits
    python examples/pi_digits.py -n 2 --digits 20000 --out /tmp/pi

It writes ``single_digits.png`` (the counts of each digit among the first
10,000 digits) and ``two_digit_counts.png`` (the counts of each pair among
all the digits) into ``--out``, and prints the counts, checked against a
serial count here.  Needs numpy and matplotlib.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import plait.parallel as ipp


def pi_digits(n: int) -> str:
    """The first ``n`` decimal digits of pi ("31415..."): Chudnovsky's series,
    summed by binary splitting in integers (14 digits a term)."""
    import math
    import sys

    c3_over_24 = 640320**3 // 24

    def split(a: int, b: int) -> tuple[int, int, int]:
        if b - a == 1:
            p = q = 1 if a == 0 else 0
            if a:
                p = (6 * a - 5) * (2 * a - 1) * (6 * a - 1)
                q = a * a * a * c3_over_24
            t = p * (13591409 + 545140134 * a)
            return p, q, -t if a & 1 else t
        m = (a + b) // 2
        p1, q1, t1 = split(a, m)
        p2, q2, t2 = split(m, b)
        return p1 * p2, q1 * q2, q2 * t1 + p1 * t2

    _, q, t = split(0, n // 14 + 2)
    one = 10 ** (n + 10)
    pi = q * 426880 * math.isqrt(10005 * one * one) // t
    if hasattr(sys, "set_int_max_str_digits"):  # (Python 3.11 limits int -> str)
        sys.set_int_max_str_digits(0)
    return str(pi)[:n]


def count_digits(block: str) -> tuple[list[int], list[int]]:
    """On an engine: the counts of each digit, and of each two-digit pair
    ``10 * first + second`` (overlapping: "141" has 14 and 41), in ``block``."""
    import numpy as np

    digits = np.frombuffer(block.encode(), dtype=np.uint8) - ord("0")
    single = np.bincount(digits, minlength=10)
    pairs = np.bincount(10 * digits[:-1].astype(np.int64) + digits[1:], minlength=100)
    return single.tolist(), pairs.tolist()


def plot_single(counts: list[int], n: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar(range(10), counts, color="tab:blue")
    ax.axhline(n / 10, color="tab:red", linestyle="--", label=f"{n / 10:,.0f} expected")
    ax.set_xticks(range(10))
    ax.set_xlabel("digit")
    ax.set_ylabel("count")
    ax.set_title(f"Single digit counts in the first {n:,} digits of pi")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_pairs(counts: list[int], n: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = np.array(counts).reshape(10, 10)
    fig, ax = plt.subplots(figsize=(6, 5))
    image = ax.imshow(grid, cmap="viridis", origin="upper")
    ax.set_xticks(range(10))
    ax.set_yticks(range(10))
    ax.set_xlabel("second digit")
    ax.set_ylabel("first digit")
    ax.set_title(f"Two digit counts in {n:,} digits of pi")
    fig.colorbar(image, ax=ax, label="count")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-n", type=int, default=4, help="engines (default 4)")
    p.add_argument("--digits", type=int, default=200_000, help="digits (default 200,000)")
    p.add_argument("--out", type=Path, default=Path("."), help="where the PNGs go")
    args = p.parse_args(argv)
    if args.digits < 10_000:
        p.error("--digits must be at least 10,000 (the single-digit plot shows 10,000)")
    args.out.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    digits = pi_digits(args.digits)
    print(f"{len(digits):,} digits of pi in {time.perf_counter() - t0:.1f} s: "
          f"{digits[:10]}...")
    with ipp.Cluster(n=args.n) as rc:
        view = rc.load_balanced_view()
        size = -(-len(digits) // len(rc.ids))
        blocks = [digits[i:i + size] for i in range(0, len(digits), size)]
        first = view.apply_async(count_digits, digits[:10_000])
        counted = view.map(count_digits, blocks, block=True, chunksize=1)
        single_10k = first.get()[0]
    single = [sum(c[0][d] for c in counted) for d in range(10)]
    pairs = [sum(c[1][k] for c in counted) for k in range(100)]
    for left, right in zip(blocks[:-1], blocks[1:], strict=True):  # pairs across blocks
        pairs[10 * int(left[-1]) + int(right[0])] += 1
    serial_single, serial_pairs = count_digits(digits)
    assert single == serial_single and pairs == serial_pairs, "the counts do not add up"
    print(f"single digit counts, first 10,000 digits: {single_10k}")
    print(f"single digit counts, all {len(digits):,} digits: {single}")
    top = sorted(range(100), key=lambda k: -pairs[k])
    print(f"most frequent pairs: {', '.join(f'{k:02d}' for k in top[:3])}; "
          f"least: {', '.join(f'{k:02d}' for k in top[-3:])}")
    plot_single(single_10k, 10_000, args.out / "single_digits.png")
    plot_pairs(pairs, len(digits), args.out / "two_digit_counts.png")
    print(f"wrote {args.out / 'single_digits.png'} and {args.out / 'two_digit_counts.png'}")
    print("the engines' counts match a serial count here")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
