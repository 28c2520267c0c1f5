"""Peak memory of `rar run --through enhancement` with and without thin images (issue 19).

    python benchmarks/thin_images_memory.py [--work DIR] [--check exists] [--cap-gb 10]

Builds the small corpus of `tests/probe_images.py` twice: eight 160 x 136 shapes, a
1200 x 150 banner and a text item, then the same plus the three probe images (1 x 2000,
10 x 500 and 1 x 39,999,999 PNGs). Each runs `rar run --through enhancement` with the
offline backend in a fresh subprocess, project folder and Dagster instance. `--check exists`
(the default) keeps ingest from opening the images, so the thin ones reach OCR.

Prints each run's exit code, wall time, failed captions and peak RSS. Peak RSS is the
child's `ru_maxrss` (`os.wait4`); `rar run` materializes in process, so that is the whole
run. Then it prints the ratio, where the target is within 1.5x. Each child runs under an
address-space cap (`--cap-gb`): before the fix the tall image asked for 21.8 GB, enough to
take the machine down.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.probe_images import SHARD, build_thin_corpus  # noqa: E402


def run(folder: Path, thin: bool, check: str, cap_bytes: int) -> dict[str, float | int]:
    """`rar run --through enhancement` on a fresh corpus and project under `folder`."""
    data = build_thin_corpus(folder / "data" / "thin", thin=thin)
    env = {**os.environ, "RAR_PROJECT_DIR": str(folder), "DAGSTER_HOME": str(folder / "home")}
    (folder / "home").mkdir()
    rar = shutil.which("rar") or str(Path(sys.executable).with_name("rar"))
    command = [rar, "run", "--data", str(data), "--through", "enhancement",
               "--image-check", check]  # fmt: skip

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (cap_bytes, cap_bytes))

    started = time.perf_counter()
    with (folder / "run.log").open("w") as log:
        child = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                 preexec_fn=cap)  # fmt: skip
        _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    failed = -1
    captions = folder / "artifacts" / "thin" / "corpus_captions" / f"{SHARD}.parquet"
    if captions.is_file():
        import pandas as pd

        failed = int((pd.read_parquet(captions).status == "failed").sum())
    return {"exit": child.returncode, "seconds": round(seconds, 1), "failed": failed,
            "peak_rss_mb": round(usage.ru_maxrss / 1024)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, help="keep the runs here (default: a temp dir)")
    parser.add_argument("--check", default="exists", choices=["decode", "header", "exists"])
    parser.add_argument("--cap-gb", type=float, default=10.0, help="address-space cap a run")
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="thin_images_"))
    cap = int(args.cap_gb * 2**30)
    results = {}
    for name, thin in (("without thin images", False), ("with thin images", True)):
        folder = work / name.replace(" ", "_")
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        results[name] = run(folder, thin, args.check, cap)
        print(f"{name:>20}: {results[name]}", flush=True)
    base, thin = (results[k]["peak_rss_mb"] for k in results)
    print(f"peak RSS ratio (with / without): {thin / base:.2f}  (target <= 1.5)")
    print(f"runs and logs under {work}")
    return max(int(r["exit"]) for r in results.values())


if __name__ == "__main__":
    raise SystemExit(main())
