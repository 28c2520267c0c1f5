"""`rar`: run the demo, run the pipeline on any M-BEIR corpus, validate a corpus.

rar demo                        build the demo corpus and run the graph on it
rar run --data DIR [--tasks T]  run the graph on an M-BEIR-layout directory
rar validate --data DIR         print the quarantine summary, write nothing
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from rar_pipeline.core.corpus.images import ImageCheck, ImageCheckLevel
from rar_pipeline.core.corpus.mbeir import LayoutError, discover
from rar_pipeline.core.enhance.guard import GuardPolicy
from rar_pipeline.core.enhance.vlm.factory import BACKENDS
from rar_pipeline.core.settings import Settings, load_settings

IMAGE_CHECK_HELP = (
    "how hard to look at images: decode (default; catches truncated files), header, "
    "exists (for very large pools), off"
)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse `rar` arguments."""
    parser = argparse.ArgumentParser(
        prog="rar", description="Reasoning-Augmented Representations pipeline"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="build the demo corpus and run the pipeline on it")
    demo.add_argument(
        "--data", type=Path, help="where to write the demo corpus (default: data/demo)"
    )
    demo.add_argument(
        "--artifacts", type=Path, help="where outputs go (default: artifacts/<data dir name>)"
    )
    demo.add_argument("--force", action="store_true", help="rebuild the corpus even if present")
    demo.add_argument("--train-products", type=int, default=480)
    demo.add_argument("--test-products", type=int, default=240)
    demo.add_argument("--train-queries", type=int, default=300, help="per task")
    demo.add_argument("--test-queries", type=int, default=100, help="per task")
    demo.add_argument("--seed", type=int, default=7)

    run = sub.add_parser("run", help="run the pipeline on an M-BEIR-layout directory")
    run.add_argument("--data", type=Path, required=True, help="the M-BEIR data root")
    run.add_argument(
        "--artifacts", type=Path, help="where outputs go (default: artifacts/<data dir name>)"
    )
    run.add_argument("--tasks", nargs="+", help="query tasks, e.g. mbeir_cirr_task7 (default: all)")

    for command in (demo, run):
        vlm = command.add_argument_group("enhancement (default: the RAR_VLM_* environment)")
        vlm.add_argument(
            "--vlm-backend",
            choices=list(BACKENDS),
            help="offline (default) | transformers | openai | vllm",
        )
        vlm.add_argument("--vlm-model", help="model id (default Qwen/Qwen2.5-VL-7B-Instruct)")
        vlm.add_argument("--vlm-base-url", help="openai backend: the server's /v1 URL")
        vlm.add_argument(
            "--hallucination-policy",
            choices=[p.value for p in GuardPolicy],
            help="what to do with entities that contradict an item's own text",
        )

    compact = sub.add_parser(
        "compact-cache",
        help="merge the cache's part files (run it while no pipeline run is writing)",
    )
    compact.add_argument(
        "--data", type=Path, help="the data root whose cache to compact (default: the demo)"
    )
    compact.add_argument("--artifacts", type=Path, help="or the artifacts dir directly")

    validate = sub.add_parser("validate", help="print the quarantine summary of a corpus")
    validate.add_argument("--data", type=Path, required=True, help="the M-BEIR data root")
    validate.add_argument("--tasks", nargs="+", help="query tasks (default: all)")
    for command in (run, validate):
        command.add_argument(
            "--image-check",
            choices=[lv.value for lv in ImageCheckLevel],
            default=ImageCheckLevel.DECODE.value,
            help=IMAGE_CHECK_HELP,
        )
    validate.add_argument(
        "--show", type=int, default=20, help="how many quarantined rows to list (default 20)"
    )
    validate.add_argument("--json", action="store_true", help="print a JSON summary instead")
    validate.add_argument(
        "--strict", action="store_true", help="exit 1 when any row is quarantined"
    )
    return parser.parse_args(argv)


def _with(resource, **updates):  # noqa: ANN001, ANN202
    """A copy of a Dagster resource with some fields changed.

    Built anew, not with pydantic's model_copy, whose updates Dagster would not see.
    """
    return type(resource)(**{**resource.model_dump(), **updates})


def _run_graph(settings: Settings, args: argparse.Namespace, build_demo: dict | None) -> int:
    # Dagster is imported here, not at module import, so `rar validate` stays fast.
    from rar_pipeline.definitions import build_assets
    from rar_pipeline.defs.launch import get_instance, run_pipeline
    from rar_pipeline.defs.resources import default_resources

    resources = default_resources(settings)
    image_check = getattr(args, "image_check", None)
    if image_check:
        resources["corpus"] = _with(resources["corpus"], image_check=image_check)
    vlm_updates = {
        field: value
        for field, value in (
            ("backend", args.vlm_backend),
            ("model_id", args.vlm_model),
            ("base_url", args.vlm_base_url),
            ("hallucination_policy", args.hallucination_policy),
        )
        if value
    }
    if vlm_updates:
        resources["vlm"] = _with(resources["vlm"], **vlm_updates)
    print(f"enhancement: {resources['vlm'].backend} ({resources['vlm'].resolved_model_id()})")
    instance = get_instance(settings)
    started = time.perf_counter()
    result = run_pipeline(
        settings,
        resources=resources,
        assets=build_assets(resources["vlm"]),
        instance=instance,
        tasks=getattr(args, "tasks", None),
        build_demo=build_demo,
        echo=print,
    )
    quarantined = sum(s.metadata.get("quarantined", 0) for s in result.steps)
    warned = [s for s in result.steps if not s.checks_passed]
    print(
        f"\ndone in {time.perf_counter() - started:.0f}s: {len(result.steps)} asset partitions "
        f"materialized, {quarantined} rows quarantined"
        + (f", {len(warned)} partitions with check warnings" if warned else "")
    )
    print(f"  outputs:     {settings.artifacts_dir}")
    if quarantined:
        print(f"  quarantine:  {settings.artifacts_dir / 'quarantine'}  (one JSON line per row)")
    print(f"  runs:        recorded in {instance.root_directory}")
    print("  look at it:  make ui   (Dagster UI on http://127.0.0.1:3000)")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from rar_pipeline.core.corpus.ingest import validate_corpus

    layout = discover(args.data)
    reports = validate_corpus(
        layout,
        tasks=args.tasks,
        image_check=ImageCheck(level=ImageCheckLevel(args.image_check)),
        progress=sys.stderr.isatty(),
    )
    # instruction lines are shared by every task: count them once
    bad_instructions = next(
        (
            r.extra["instructions_quarantined"]
            for r in reports
            if r.extra.get("instructions_quarantined")
        ),
        [],
    )
    total_rows = sum(r.summary["rows"] for r in reports)
    total_bad = sum(r.summary["quarantined"] for r in reports) + len(bad_instructions)
    if args.json:
        print(
            json.dumps(
                {
                    "data_root": str(layout.root),
                    "rows": total_rows,
                    "quarantined": total_bad,
                    "files": {r.key: r.summary for r in reports},
                    "quarantine": [
                        {
                            "source": q.source,
                            "line": q.line,
                            "row_id": q.row_id,
                            "reason": q.reason.value,
                            "detail": q.detail,
                        }
                        for q in [*(q for r in reports for q in r.quarantined), *bad_instructions]
                    ],
                },
                indent=2,
            )
        )
    else:
        print(f"{layout.root}: {len(layout.pools)} pool shards, {len(layout.queries)} tasks")
        print(f"{'shard / task':<48} {'rows':>9} {'quarantined':>12}  reasons")
        for r in reports:
            reasons = ", ".join(f"{k}={v}" for k, v in r.summary["by_reason"].items())
            print(f"{r.key:<48} {r.summary['rows']:>9} {r.summary['quarantined']:>12}  {reasons}")
        if bad_instructions:
            print(f"{'instructions':<48} {'':>9} {len(bad_instructions):>12}")
        print(f"{'total':<48} {total_rows:>9} {total_bad:>12}")
        every = [q for r in reports for q in r.quarantined] + list(bad_instructions)
        shown = every[: args.show]
        if shown:
            print("\nquarantined rows:")
            for q in shown:
                print(f"  {q.source}:{q.line} [{q.row_id or '-'}] {q.reason.value}: {q.detail}")
            if total_bad > len(shown):
                print(f"  ... and {total_bad - len(shown)} more (use --show N or --json)")
    return 1 if args.strict and total_bad else 0


def _compact(args: argparse.Namespace) -> int:
    from rar_pipeline.core.enhance.cache import ParquetStore

    settings = load_settings(data_root=args.data, artifacts_dir=args.artifacts)
    root = settings.artifacts_dir / "cache"
    stores = sorted({p.parent for p in root.rglob("part-*.parquet")}) if root.is_dir() else []
    if not stores:
        print(f"no cache under {root}")
        return 0
    for directory in stores:
        before = len(list(directory.glob("part-*.parquet")))
        rows = ParquetStore(directory).compact()
        print(f"{directory.relative_to(root)}: {before} part files -> 1 ({rows} entries)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `rar` command; returns the exit code."""
    args = parse_args(argv)
    try:
        if args.command == "validate":
            return _validate(args)
        if args.command == "compact-cache":
            return _compact(args)
        if args.command == "run":
            settings = load_settings(data_root=args.data, artifacts_dir=args.artifacts)
            discover(settings.data_root)  # fail fast, before Dagster starts, on a wrong path
            return _run_graph(settings, args, build_demo=None)
        if args.command == "demo":
            base = load_settings()
            settings = load_settings(
                data_root=args.data or base.demo_root, artifacts_dir=args.artifacts
            )
            demo_config = {
                "n_train_products": args.train_products,
                "n_test_products": args.test_products,
                "train_queries_per_task": args.train_queries,
                "test_queries_per_task": args.test_queries,
                "seed": args.seed,
                "force": args.force,
            }
            return _run_graph(settings, args, build_demo=demo_config)
    except (LayoutError, FileExistsError, ValueError, KeyError) as exc:
        print(f"rar: error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # a failed step (defs.launch.StepFailed)
        print(f"rar: error: {exc}", file=sys.stderr)
        print("  the run's full log is in the Dagster UI: make ui -> Runs", file=sys.stderr)
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
