"""Compare two project folders' demo outputs: corpus files, Parquet tables, caption memory.

For refactors that must not change behaviour: run `rar demo` in a clone of the old commit
and of the new one, then

    python benchmarks/compare_outputs.py OLD_PROJECT NEW_PROJECT [--corpus demo]

Corpus files and images are compared byte for byte; Parquet outputs as tables (columns,
order, values); the offline caption memory byte for byte; the evaluation as its run files
(byte for byte) and the rows of its report, the ablation table `rar report` prints (paths
aside). Exits 1 on any difference.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import pandas as pd

STAGES = (
    "candidate_pool",
    "queries",
    "qrels",
    "corpus_captions",
    "enhanced_corpus",
    "enhanced_queries",
)


def _hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _files(root: Path) -> list[Path]:
    return sorted(
        p.relative_to(root) for p in root.rglob("*") if p.is_file() and p.name != ".rar_demo.json"
    )


def compare(old: Path, new: Path, corpus: str) -> int:
    """Print what differs; return the number of differences."""
    bad = 0
    for sub in (f"data/{corpus}", f"data/{corpus}_truth"):
        before, after = _files(old / sub), _files(new / sub)
        if before != after:
            print(f"{sub}: file lists differ: {sorted(set(before) ^ set(after))[:10]}")
            bad += 1
        changed = [
            p for p in set(before) & set(after) if _hash(old / sub / p) != _hash(new / sub / p)
        ]
        print(f"{sub}: {len(before)} files, {len(changed)} differ")
        bad += len(changed)
    for stage in STAGES:
        tables = sorted((old / "artifacts" / corpus / stage).glob("*.parquet"))
        for table in tables:
            x = pd.read_parquet(table)
            y = pd.read_parquet(new / "artifacts" / corpus / stage / table.name)
            if list(x.columns) != list(y.columns) or not x.equals(y):
                print(f"{stage}/{table.name}: differs")
                bad += 1
        print(f"{stage}: {len(tables)} tables compared")
    memory = Path("artifacts") / corpus / "offline_captioner"
    for name in ("texts.json", "features.safetensors"):
        if (old / memory / name).is_file() and _hash(old / memory / name) != _hash(
            new / memory / name
        ):
            print(f"offline_captioner/{name}: differs")
            bad += 1
    bad += _compare_evaluation(old / "artifacts" / corpus, new / "artifacts" / corpus)
    print("identical" if not bad else f"{bad} differences")
    return bad


def _compare_evaluation(old: Path, new: Path) -> int:
    """Differences between two evaluations: run files, then the report's rows."""
    bad = 0
    runs = sorted(p.relative_to(old) for p in (old / "evaluation" / "runs").rglob("*.trec"))
    changed = [p for p in runs if not (new / p).is_file() or _hash(old / p) != _hash(new / p)]
    print(f"evaluation runs: {len(runs)} run files, {len(changed)} differ")
    bad += len(changed)
    report = Path("evaluation") / "report.json"
    if (old / report).is_file():
        rows = [
            [{k: v for k, v in row.items() if k != "run_file"} for row in json.loads(
                (root / report).read_text())["rows"]]
            for root in (old, new)
        ]  # fmt: skip
        same = rows[0] == rows[1]
        print(f"evaluation report: {len(rows[0])} rows, {'identical' if same else 'differ'}")
        bad += 0 if same else 1
    return bad


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--corpus", default="demo")
    args = parser.parse_args()
    return 1 if compare(args.old, args.new, args.corpus) else 0


if __name__ == "__main__":
    raise SystemExit(main())
