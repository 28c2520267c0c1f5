"""The mini corpus through the whole graph: on one machine against on the local stack.

One machine: `rar run --data tests/fixtures/mbeir_mini` (sqlite, local folders, steps in
process). The stack (`rar_pipeline.stack.deployment`): PostgreSQL, Redis, SeaweedFS, an
MLflow server, the Dagster webserver and daemon, N workers; the corpus uploaded to the
bucket, then the graph as runs whose steps go to the workers (`rar_pipeline.stack.graph`),
each step pulling and pushing its local copies. Both with 2 epochs. Prints wall times (the
stack's start-up apart), the number of steps, and the overhead per step.

    .venv/bin/python benchmarks/cluster_overhead.py [--workers 1 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rar_pipeline.core.mirror import filesystem_for, upload_tree  # noqa: E402
from rar_pipeline.stack.deployment import stack  # noqa: E402

MINI = ROOT / "tests" / "fixtures" / "mbeir_mini"


def local_run(tmp: Path) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAR_", "DAGSTER_", "MLFLOW"))}
    env.update(RAR_PROJECT_DIR=str(tmp), DAGSTER_HOME=str(tmp / "dagster_home"), RAR_EPOCHS="2")
    started = time.perf_counter()
    subprocess.run([str(ROOT / ".venv" / "bin" / "rar"), "run", "--data", str(MINI)], env=env,
                   check=True, capture_output=True)  # fmt: skip
    return time.perf_counter() - started


def stack_run(tmp: Path, workers: int) -> tuple[float, float, int]:
    started = time.perf_counter()
    with stack(tmp, ROOT / "deploy" / "dagster.yaml", workers=workers, corpus="mbeir_mini",
               extra_env={"RAR_EPOCHS": "2"}) as running:  # fmt: skip
        up = time.perf_counter() - started
        _, remote = filesystem_for(running.data_root)
        upload_tree(MINI, running.store.filesystem(), remote)
        started = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "rar_pipeline.stack.graph"],
                             env=running.env, cwd=tmp / "project", capture_output=True,
                             text=True, check=True)  # fmt: skip
        graph = time.perf_counter() - started
        runs = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
        os.environ.update(DAGSTER_HOME=running.env["DAGSTER_HOME"],
                          DAGSTER_POSTGRES_URL=running.env["DAGSTER_POSTGRES_URL"])  # fmt: skip
        import dagster as dg

        done = dg.DagsterEventType.STEP_SUCCESS
        with dg.DagsterInstance.get() as instance:
            steps = sum(
                len(instance.get_records_for_run(r["run_id"], of_type=done).records) for r in runs
            )
    return up, graph, steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[2])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        local = local_run(Path(tmp) / "local")
    print(f"one machine: {local:.0f} s")
    for n in args.workers:
        with tempfile.TemporaryDirectory() as tmp:
            up, graph, steps = stack_run(Path(tmp), n)
        print(f"stack, {n} workers: start-up {up:.0f} s, graph {graph:.0f} s, {steps} steps, "
              f"{(graph - local) / steps:+.2f} s per step against one machine")  # fmt: skip


if __name__ == "__main__":
    main()
