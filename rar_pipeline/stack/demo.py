"""`rar stack demo` (`make cluster-demo`): the demo, run on a local stack instead of in one process.

It starts a stack in a temporary folder (`stack.deployment`), builds the demo corpus there,
uploads it to the stack's bucket, runs the whole graph as runs whose steps go to the
stack's Celery workers (`stack.graph`), and prints the ablation table from the report in
the bucket, as `rar demo` prints it. Nothing is written under the project's `data/` or
`artifacts/`; the stack and its files are gone when it returns.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from rar_pipeline.core.demo.builder import DemoConfig, build_demo_corpus
from rar_pipeline.core.layout import ArtifactLayout
from rar_pipeline.core.mirror import Mirror, filesystem_for, upload_tree
from rar_pipeline.stack.deployment import Stack, stack

CORPUS = "demo"


def run_graph(running: Stack, echo: Callable[[str], None] = print) -> list[dict]:
    """The whole graph on the stack, a run per stage partition; the runs, as they ended.

    The runs' own log goes to `<stack>/graph.log` (a file, not a pipe: a pipe nobody reads
    while the runs go on fills up and stops them).
    """
    log = running.folder / "graph.log"
    with open(log, "w") as errors:
        process = subprocess.Popen(
            [sys.executable, "-m", "rar_pipeline.stack.graph"], env=running.env,
            cwd=running.folder / "project", stdout=subprocess.PIPE, stderr=errors, text=True,
        )  # fmt: skip
        runs = []
        assert process.stdout is not None
        for line in process.stdout:
            if line.startswith("{"):
                run = json.loads(line)
                runs.append(run)
                where = f"[{run['partition']}]" if run["partition"] else ""
                echo(f"  {run['asset']}{where}: {'done' if run['success'] else 'FAILED'}")
    if process.wait() != 0 and not runs:
        raise RuntimeError(f"the graph did not start on the stack:\n{log.read_text()[-3000:]}")
    return runs


def evaluation_on(running: Stack, into: Path) -> ArtifactLayout:
    """The evaluation outputs the stack's bucket holds, copied into `into`."""
    filesystem = running.store.filesystem()
    _, remote = filesystem_for(running.artifacts_dir)
    Mirror(filesystem, remote, into, only=("evaluation",)).pull()
    return ArtifactLayout(into)


def cluster_demo(
    instance_yaml: Path,
    config: DemoConfig,
    *,
    workers: int = 2,
    settings_env: dict[str, str] | None = None,
    report: Callable[[ArtifactLayout], str],
    echo: Callable[[str], None] = print,
) -> int:
    """Run the demo on a throwaway stack and print its ablation table; the exit code."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="rar-stack-") as tmp:
        folder = Path(tmp)
        echo(f"starting a stack with {workers} workers in {folder} ...")
        with stack(folder, instance_yaml, workers=workers, corpus=CORPUS,
                   extra_env=settings_env) as running:  # fmt: skip
            echo(running.describe())
            corpus = folder / "build" / CORPUS
            build_demo_corpus(corpus, config)
            _, remote = filesystem_for(running.data_root)
            sent = upload_tree(corpus, running.store.filesystem(), remote)
            echo(f"demo corpus: {sent} files -> {running.data_root}")
            runs = run_graph(running, echo)
            failed = [r for r in runs if not r["success"]]
            if failed:
                names = ", ".join(f"{r['asset']}[{r['partition'] or ''}]" for r in failed)
                echo(f"{len(failed)} runs failed on the stack: {names}")
                return 1
            echo(report(evaluation_on(running, folder / "evaluation")))
    echo(f"cluster demo done in {time.perf_counter() - started:.0f} s; the stack is stopped")
    return 0
