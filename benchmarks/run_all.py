"""Run every benchmark and print one table: `make bench`, or `.venv/bin/python benchmarks/run_all.py`.

The scripts run one after another (never side by side, which would time contention), each
returning its rows; --quick passes their own --quick on (fewer steps and repetitions).
"""

from __future__ import annotations

import argparse
import time

import api_overhead
import compare_scaling
import overhead
import reproduce_time
from common import Row, print_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer steps and repetitions")
    quick = parser.parse_args().quick
    rows: list[Row] = []
    started = time.perf_counter()
    for module in (overhead, api_overhead, compare_scaling, reproduce_time):
        print(f"running {module.__name__} ...", flush=True)
        rows += module.measure(quick)
    minutes = (time.perf_counter() - started) / 60
    print_table(rows, f"gradlab benchmarks ({minutes:.1f} min{', --quick' if quick else ''})")


if __name__ == "__main__":
    main()
