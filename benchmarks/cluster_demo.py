"""The demo at full size: `rar demo` on one machine against `rar stack demo` on a local stack.

Both from nothing in a temporary project (the stack's: `deploy/dagster.yaml` only), the
demo corpus at its default size, the same settings. Prints each wall time, and how far
apart the two ablation tables are: the largest difference of any cell (issue 22 asks for
at most 0.01) and how many cells differ at all.

    .venv/bin/python benchmarks/cluster_demo.py [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RAR = ROOT / ".venv" / "bin" / "rar"
NUMBER = re.compile(r"^-?\d+(\.\d+)?$")


def run(command: list[str], project: Path) -> tuple[float, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAR_", "DAGSTER_", "MLFLOW"))}
    env |= {"RAR_PROJECT_DIR": str(project), "DAGSTER_HOME": str(project / "dagster_home")}
    started = time.perf_counter()
    out = subprocess.run(command, env=env, cwd=project, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{out.stdout[-3000:]}{out.stderr[-3000:]}")
    return time.perf_counter() - started, out.stdout


def table(output: str) -> list[str]:
    """The ablation table's lines: from the first `... test split, ... pools` title to
    what follows it (`rar demo`'s chart line, `rar stack demo`'s closing line)."""
    lines = output.splitlines()
    first = next(i for i, line in enumerate(lines) if "test split," in line)
    ends = ("  chart:", "cluster demo done")
    last = next((i for i in range(first, len(lines)) if lines[i].startswith(ends)), len(lines))
    return [line for line in lines[first:last] if line.strip()]


def compare(local: list[str], cluster: list[str]) -> tuple[float, int, int]:
    """(largest difference of a numeric cell, cells that differ, cells compared)."""
    if len(local) != len(cluster):
        raise SystemExit(f"the tables differ in shape:\n{chr(10).join(local)}\n---\n"
                         f"{chr(10).join(cluster)}")  # fmt: skip
    largest, differ, cells = 0.0, 0, 0
    for a, b in zip(local, cluster, strict=True):
        for x, y in zip(a.split(), b.split(), strict=True):
            if NUMBER.match(x) and NUMBER.match(y):
                cells += 1
                gap = abs(float(x) - float(y))
                largest, differ = max(largest, gap), differ + (gap > 0)
            elif x != y:
                raise SystemExit(f"the tables differ in a label: {x!r} against {y!r}")
    return largest, differ, cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="cluster-demo-"))
    local_project, stack_project = base / "local", base / "stack"
    local_project.mkdir()
    (stack_project / "deploy").mkdir(parents=True)
    shutil.copy(ROOT / "deploy" / "dagster.yaml", stack_project / "deploy")
    local_s, local_out = run([str(RAR), "demo"], local_project)
    print(f"rar demo: {local_s:.0f} s", flush=True)
    stack_s, stack_out = run(
        [str(RAR), "stack", "demo", "--workers", str(args.workers)], stack_project
    )
    print(f"rar stack demo ({args.workers} workers): {stack_s:.0f} s", flush=True)
    largest, differ, cells = compare(table(local_out), table(stack_out))
    print(f"tables: {cells} cells, {differ} differ, largest difference {largest:.4f}")
    print("\n".join(table(stack_out)))
    written = [p for p in stack_project.rglob("*") if p.is_file()]
    print(f"files in the stack demo's project afterwards: {[str(p) for p in written]}")
    shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
