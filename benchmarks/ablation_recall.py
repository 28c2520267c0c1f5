"""The ablation on a corpus' test split: Recall@1/5 per task and query type, five configs.

    python benchmarks/ablation_recall.py [--data data/demo] [--artifacts artifacts/demo]
        [--json out.json] [--retrain heads|full|lora --configs none,full --epochs N]

Needs the trained checkpoints (`make demo` or `rar run`); with `--retrain`, trains the
named configs' retrievers afresh from the pipeline's training tables (as the
`retriever_checkpoint_<config>` asset does, other options at their defaults) into
`<artifacts>/bench_checkpoints/<trained>/` and measures those instead.

Each test query is ranked against the pool its positives live in (M-BEIR's local setting)
by dense dot product, with the config's own retriever and representations:

    none / corpus / query / full   the config's checkpoint, its query and candidate texts
    inference-only                 full's representations through the `none` retriever

Recall@k is UniIR's: a hit if any positive is in the top k. This is a measurement for the
training issue's note; the evaluation asset (ranx, run files, significance) supersedes it.
Test labels are read here only to score, never by training.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd

from rar_pipeline.core.corpus.mbeir import discover
from rar_pipeline.core.layout import ArtifactLayout, ProjectLayout
from rar_pipeline.core.retrieval.checkpoint import write_checkpoint
from rar_pipeline.core.retrieval.data import encode_item, home_pools, training_data
from rar_pipeline.core.retrieval.encoders.factory import create_encoder, load_encoder
from rar_pipeline.core.retrieval.options import TrainOptions
from rar_pipeline.core.retrieval.pairs import CONFIGS
from rar_pipeline.core.retrieval.train import train_retriever
from rar_pipeline.core.retrieval.validation import hit_rate, rank_in_pools

RUNS = {  # row label -> (retriever, representations)
    "none": ("none", "none"),
    "corpus": ("corpus", "corpus"),
    "query": ("query", "query"),
    "full": ("full", "full"),
    "inference-only": ("none", "full"),
}
KS = (1, 5)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    project = ProjectLayout(Path.cwd())
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=project.demo_data)
    parser.add_argument("--artifacts", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    parser.add_argument("--retrain", choices=["heads", "full", "lora"], default=None)
    parser.add_argument("--configs", default="none,corpus,query,full")
    parser.add_argument("--epochs", type=int, default=TrainOptions.epochs)
    parser.add_argument("--patience", type=int, default=TrainOptions.patience)
    parser.add_argument("--lr", type=float, default=TrainOptions.lr)
    parser.add_argument("--mixed-batches", action="store_true", help="batch_by_pool=False")
    parser.add_argument("--checkpoints", type=Path, default=None, help="measure <dir>/<config>")
    return parser.parse_args(argv)


def retrain(
    root: Path, paths: ArtifactLayout, trained: str, configs: list[str], options: TrainOptions
) -> Path:
    """Train the configs' retrievers afresh; returns the folder holding their checkpoints."""
    mode = "pool" if options.batch_by_pool else "mixed"
    out = (
        paths.root
        / "bench_checkpoints"
        / f"{trained}-{mode}-e{options.epochs}-p{options.patience}-lr{options.lr}"
    )
    for config in configs:
        data = training_data(
            pd.read_parquet(paths.training_pairs(config)),
            pd.read_parquet(paths.training_candidates(config)),
            root,
        )
        encoder = create_encoder("offline", cache_dir=paths.perception_cache, trained=trained)
        started = time.perf_counter()
        result = train_retriever(
            encoder,
            data,
            options,
            out / f".state-{config}",
            observe=lambda kind, step, m, c=config: kind == "eval" and print(f"  {c} {step}: {m}"),
        )
        print(f"{config}: {result.summary()} in {time.perf_counter() - started:.0f}s")
        write_checkpoint(out / config, result.encoder, {"config": config, **result.summary()})
    return out


def test_queries(paths: ArtifactLayout, tasks: list[str]) -> pd.DataFrame:
    frames = [pd.read_parquet(paths.enhanced_queries(t)).assign(task=t) for t in tasks]
    frame = pd.concat(frames, ignore_index=True)
    return frame[frame["split"] == "test"].reset_index(drop=True)


def measure(root: Path, paths: ArtifactLayout, checkpoints: dict[str, Path]) -> list[dict]:
    tasks = sorted(discover(root).queries)
    queries = test_queries(paths, tasks)
    encoders = {
        c: load_encoder(path, cache_dir=paths.perception_cache) for c, path in checkpoints.items()
    }
    rows = []
    for label, (retriever, rep) in RUNS.items():
        if retriever not in encoders:
            continue
        config = CONFIGS[rep]
        cands = pd.read_parquet(paths.training_candidates(rep))
        pools: dict[str, list[str]] = {}
        for did, pool in zip(cands["did"], cands["pool"], strict=True):
            pools.setdefault(pool, []).append(did)
        pool_of = home_pools(pools)
        items = {
            d: encode_item(t, i, root)
            for d, t, i in zip(cands["did"], cands["txt"], cands["img_path"], strict=True)
        }
        text = (
            queries["enhanced_txt"].fillna(queries["txt"])
            if config.enhanced_queries
            else queries["txt"]
        )
        q_items = [encode_item(t, i, root) for t, i in zip(text, queries["img_path"], strict=True)]
        homes = [pool_of.get(next(iter(p), "")) for p in queries["pos_cand_list"]]
        ranked = rank_in_pools(encoders[retriever], q_items, homes, pools, items, max(KS))
        positives = [frozenset(p) for p in queries["pos_cand_list"]]
        for (task, qtype), group in queries.groupby(["task", "query_type"]):
            sel = list(group.index)
            rows.append(
                {
                    "task": task,
                    "query_type": qtype,
                    "config": label,
                    "n_queries": len(sel),
                    **{
                        f"recall_at_{k}": hit_rate(
                            [ranked[i] for i in sel], [positives[i] for i in sel], k
                        )
                        for k in KS
                    },
                }
            )
    return rows


def markdown(rows: list[dict]) -> str:
    frame = pd.DataFrame(rows)
    lines = [
        "| task | query type | n | " + " | ".join(f"{c} R@1 / R@5" for c in RUNS) + " |",
        "|---|---|---|" + "---|" * len(RUNS),
    ]
    for (task, qtype), group in frame.groupby(["task", "query_type"], sort=True):
        by = group.set_index("config")
        cells = [
            f"{by.loc[c, 'recall_at_1']:.2f} / {by.loc[c, 'recall_at_5']:.2f}"
            if c in by.index
            else "-"
            for c in RUNS
        ]
        lines.append(
            f"| {task} | {qtype} | {int(by['n_queries'].iloc[0])} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    root = args.data.resolve()
    paths = ArtifactLayout(args.artifacts or ProjectLayout(Path.cwd()).artifacts_for(root))
    configs = args.configs.split(",")
    if args.retrain:
        options = TrainOptions(
            epochs=args.epochs,
            patience=args.patience,
            lr=args.lr,
            batch_by_pool=not args.mixed_batches,
        )
        folder = retrain(root, paths, args.retrain, configs, options)
        checkpoints = {c: folder / c for c in configs}
    elif args.checkpoints:
        checkpoints = {c: args.checkpoints / c for c in configs}
    else:
        checkpoints = {c: paths.checkpoint(c) for c in configs}
    rows = measure(root, paths, checkpoints)
    print(markdown(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
