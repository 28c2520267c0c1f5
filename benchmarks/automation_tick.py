"""How long one automation tick takes: Dagster's evaluation of every asset's automation
condition (`defs/automation.py`) on the whole graph, as the automation sensors run it.

The conditions look up to `LOOKS_UP` assets upstream for outdated, running or requested
work; each step up adds evaluation. This times the evaluation at each cap, on an instance
where the graph (two pool shards, one query task) was materialized once.

    .venv/bin/python benchmarks/automation_tick.py [--ticks 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from unittest import mock

import dagster as dg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rar_pipeline.defs import automation  # noqa: E402
from tests.defs.test_automation import graph, materialize_everything  # noqa: E402


def tick_seconds(cap: int, ticks: int) -> list[float]:
    """Seconds per evaluation with conditions that look `cap` assets up."""
    with mock.patch.object(automation, "LOOKS_UP", cap), dg.instance_for_test() as instance:
        materialize_everything(instance)
        defs, cursor, out = graph(), None, []
        for _ in range(ticks):
            started = time.perf_counter()
            cursor = dg.evaluate_automation_conditions(
                defs=defs, instance=instance, cursor=cursor
            ).cursor
            out.append(time.perf_counter() - started)
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ticks", type=int, default=3)
    args = parser.parse_args()
    print("| looks up | first tick (s) | later ticks, median (s) |")
    print("|---|---|---|")
    for cap in (1, 2, 3, 9):
        seconds = tick_seconds(cap, args.ticks)
        print(f"| {cap} | {seconds[0]:.1f} | {statistics.median(seconds[1:]):.1f} |")


if __name__ == "__main__":
    main()
