"""Issue 19's search probes, timed: each one against a real `rar serve`, and the CLI's.

    python benchmarks/search_probes.py [--project DIR]

Without --project, a tiny demo project is built first (`rar demo` at the test suite's tiny
size, ~1 min). The probes run on a copy (some damage it). For each: the statuses, the
seconds it took, the server's peak memory (VmHWM) after it, and the seconds a normal query
took right after. Then each `rar search` repro in a fresh process: exit code, seconds, peak
memory, and the first line of its error.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rar_pipeline.stack.processes import free_port, server_process  # noqa: E402
from tests.projects import PROJECT_VARS, TINY_DEMO  # noqa: E402
from tests.web.hostile import NORMAL, PROBES, THIN, peak_rss_mb, search, thin_png  # noqa: E402


def project_env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in PROJECT_VARS}
    return env | {"RAR_PROJECT_DIR": str(root), "HF_HUB_OFFLINE": "1",
                  "DAGSTER_HOME": str(root / "dagster_home")}  # fmt: skip


def rar(args: list[str], env: dict[str, str]) -> tuple[int, float, float, str]:
    """(exit code, seconds, peak MB, first error line) of one `rar` command."""
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "rar_pipeline.cli", *args], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    _, status, usage = os.wait4(process.pid, 0)
    err = process.stderr.read().decode().strip().splitlines() if process.stderr else []
    seconds = time.perf_counter() - started
    last = next((line for line in reversed(err) if "error" in line), err[-1] if err else "")
    return os.waitstatus_to_exitcode(status), seconds, usage.ru_maxrss / 1024, last[:110]


def serve_probes(root: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        with urllib.request.urlopen(f"{url}/healthz", timeout=2) as answer:
            return answer.status == 200

    command = [sys.executable, "-m", "rar_pipeline.cli", "serve", "--port", str(port)]
    with server_process(command, ready, env=project_env(root), log=root.parent / "serve.log",
                        start_timeout=180) as process:  # fmt: skip
        print(f"rar serve ready, {peak_rss_mb(process.pid):.0f} MB peak so far\n")
        print("| probe | statuses | expected | s | server peak MB | next query s |")
        print("|---|---|---|---|---|---|")
        for name, (probe, expected) in PROBES.items():
            started = time.perf_counter()
            got = probe(url, root)
            took = time.perf_counter() - started
            after = time.perf_counter()
            status, _ = search(url, **NORMAL)
            assert status == 200
            print(
                f"| {name} | {got} | {expected} | {took:.2f} | "
                f"{peak_rss_mb(process.pid):.0f} | {time.perf_counter() - after:.2f} |"
            )


def cli_probes(root: Path) -> None:
    env = project_env(root)
    images = root.parent / "images"
    images.mkdir(exist_ok=True)
    for width, height in THIN:
        (images / f"thin_{width}x{height}.png").write_bytes(thin_png(width, height))
    repros = [
        ["search", "red", "-k", "4611686018427387904"],
        ["search", '"yellow rectangle"', "--hybrid", "-k", "3"],
        *(["search", "what is this?", "--image", str(images / f"thin_{w}x{h}.png")]
          for w, h in THIN),
        ["search", "a red hat", "--config", "query"],  # the table PROBES damaged
        ["search", "a red hat", "--config", "corpus"],  # the checkpoint without manifest
    ]  # fmt: skip
    print("\n| rar ... | exit | s | peak MB | says |")
    print("|---|---|---|---|---|")
    for args in repros:
        code, seconds, peak, says = rar(args, env)
        shown = " ".join(a if len(a) < 40 else "..." + a[-30:] for a in args)
        print(f"| `{shown}` | {code} | {seconds:.1f} | {peak:.0f} | {says} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, help="a project after `rar demo`")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="search_probes_"))
    try:
        source = args.project
        if source is None:
            source = work / "built"
            source.mkdir()
            command = [sys.executable, "-m", "rar_pipeline.cli", *TINY_DEMO]
            env = project_env(source)
            subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
        root = work / "project"
        shutil.copytree(source, root, ignore=shutil.ignore_patterns("dagster_home"))
        serve_probes(root)
        cli_probes(root)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
