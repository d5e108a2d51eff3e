"""Rate of `flapguard backtest` in-process against parsing alone, same file, same run.

Generates a feed (`flapguard generate`, default 40 accounts over 3 weeks) unless
`--input` names one, then measures, best of `--repeat` runs each, on one core:
  (a) parsing alone: read the file line by line and `orjson.loads` every line;
  (b) the backtest: read, parse, validate, key, hold, decide and report every finding
      (no labels, no decisions file), as `flapguard backtest --input FILE` does.
Prints both rates in findings per second (one finding per line in a generated feed),
wall clock and CPU time, and their ratio. A benchmark, not a test: figures vary with
the machine's load; CPU time is the steadier figure on a busy machine.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from streams.backtest.generate import Profile, write_feed  # noqa: E402
from streams.backtest.run import backtest_files, open_input  # noqa: E402
from streams.core.policy import Policy  # noqa: E402


def parse_only(path: Path) -> tuple[int, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    count = 0
    loads = orjson.loads
    with open_input(path) as handle:
        for line in handle:
            if line.strip():
                loads(line)
                count += 1
    return count, time.perf_counter() - wall, time.process_time() - cpu


def backtest(path: Path) -> tuple[int, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    report = backtest_files([path], policy=Policy(), now_ms=int(time.time() * 1000),
                            labels=None, progress=False)
    return report.findings, time.perf_counter() - wall, time.process_time() - cpu


def best(run: object, path: Path, repeat: int) -> tuple[int, float, float]:
    results = [run(path) for _ in range(repeat)]  # type: ignore[operator]
    count = results[0][0]
    return count, min(r[1] for r in results), min(r[2] for r in results)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", type=Path, help="a findings file (default: generate one)")
    parser.add_argument("--accounts", type=int, default=40)
    parser.add_argument("--days", type=float, default=21)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-backtest-") as tmp:
        path = args.input
        if path is None:
            path = Path(tmp) / "feed.jsonl"
            stats = write_feed(Profile(seed=args.seed, accounts=args.accounts, days=args.days), path)
            print(f"generated {stats.findings:,} findings ({args.accounts} accounts, {args.days:g} days, "
                  f"{path.stat().st_size / stats.findings:,.0f} bytes each)")
        n_parse, wall_parse, cpu_parse = best(parse_only, path, args.repeat)
        n_bt, wall_bt, cpu_bt = best(backtest, path, args.repeat)
    print(f"parse only (orjson.loads per line): {n_parse / wall_parse:>10,.0f} lines/s wall, "
          f"{n_parse / cpu_parse:>10,.0f} lines/s CPU")
    print(f"backtest (in-process, 1 partition): {n_bt / wall_bt:>10,.0f} findings/s wall, "
          f"{n_bt / cpu_bt:>10,.0f} findings/s CPU")
    print(f"ratio backtest/parse: {cpu_parse / cpu_bt:.2f} (CPU), {wall_parse / wall_bt:.2f} (wall)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
