"""`rar`: run the demo, run the pipeline on any M-BEIR corpus, validate a corpus.

rar demo                        build the demo corpus and run the graph on it
rar run --data DIR [--tasks T]  run the graph on an M-BEIR-layout directory (--through
                                enhancement: stop after a stage)
rar refresh [--include-training]  run what a prompt edit or new setting made outdated, and
                                what reads it (--plan: print it, run nothing)
rar validate --data DIR         print the quarantine summary, write nothing
rar report [--data DIR]         print the latest evaluation (table, json or markdown)
rar search TEXT [--image PATH]  search a corpus' index with the pipeline's enhancement
rar serve [--port N]            the search page on http://127.0.0.1:N
rar sync-tracking               replay runs tracked while MLflow was unreachable
rar prompts [--prompts FILE]    print the prompts in force, as a prompts file to edit
rar ui [--data DIR ...]         the Dagster UI with one code location per corpus
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from rar_pipeline.cli_args import parse_args
from rar_pipeline.core import names
from rar_pipeline.core.corpus.mbeir import LayoutError, discover
from rar_pipeline.core.layout import ArtifactLayout
from rar_pipeline.core.settings import BY_DEST, KNOBS, Settings, load_settings


def settings_from_args(args: argparse.Namespace, env=None) -> Settings:  # noqa: ANN001
    """Resolve the settings: the flags given win over the environment, then defaults."""
    flags = {k.dest: getattr(args, k.dest) for k in KNOBS if hasattr(args, k.dest)}
    if args.command == "demo" and flags.get("corpus__data_root") is None:
        # The demo always writes its own folder unless told otherwise: RAR_DATA_ROOT names
        # the corpus `rar run` and the UI read, which the demo must never overwrite.
        flags["corpus__data_root"] = load_settings(env).storage.layout().demo_data
    return load_settings(env, **flags)


def ui_command(settings: Settings) -> str:
    """`make ui` with the variables that point it at this run's corpus and prompts file.

    None for the demo with the shipped prompts.
    """
    places = settings.storage.layout()
    data, artifacts = settings.data_root, settings.artifacts_dir
    pointers = {
        BY_DEST["corpus__data_root"].env: data if data != places.demo_data.resolve() else None,
        BY_DEST["corpus__artifacts_dir"].env: (
            artifacts if artifacts != places.artifacts_for(data).resolve() else None
        ),
        BY_DEST["enhance__prompts"].env: settings.enhance.prompts or None,
    }
    return "".join(f"{k}={v} " for k, v in pointers.items() if v is not None) + "make ui"


def _run_graph(settings: Settings, args: argparse.Namespace, build_demo: dict | None) -> int:
    # Dagster is imported here, not at module import, so `rar validate` stays fast.
    from rar_pipeline.definitions import build_assets
    from rar_pipeline.defs.launch import get_instance, run_pipeline
    from rar_pipeline.defs.namespace import bare_name, namespace_of
    from rar_pipeline.defs.resources import resources_from_settings

    resources = resources_from_settings(settings)
    print(f"enhancement: {resources['vlm'].backend} ({resources['vlm'].resolved_model_id()})")
    retriever = resources["retriever"]
    print(
        f"retriever: {retriever.encoder} {retriever.model} (trains {retriever.trained})".replace(
            "  ", " "
        )
    )
    instance = get_instance(settings)
    started = time.perf_counter()
    assets = build_assets(
        resources["vlm"], resources["retriever"], namespace_of(settings.corpus.name)
    )
    refresh = None
    if args.command == "refresh":
        from rar_pipeline.defs.refresh import Refresh

        refresh = Refresh(assets, instance, include_training=args.include_training)
    result = run_pipeline(
        settings,
        resources=resources,
        assets=assets,
        instance=instance,
        tasks=getattr(args, "tasks", None),
        build_demo=build_demo,
        through=getattr(args, "through", None),
        select=refresh,
        plan_only=getattr(args, "plan", False),
        echo=print,
    )
    if refresh is not None:
        print(refresh.summary(plan=args.plan))
        if args.plan:
            return 0
    quarantined = sum(s.metadata.get("quarantined", 0) for s in result.steps)
    warned = [s for s in result.steps if not s.checks_passed]
    print(
        f"\ndone in {time.perf_counter() - started:.0f}s: {len(result.steps)} asset partitions "
        f"materialized, {quarantined} rows quarantined"
        + (f", {len(warned)} partitions with check warnings" if warned else "")
    )
    print(f"  outputs:     {settings.artifacts_dir}")
    if quarantined:
        quarantine = ArtifactLayout(settings.artifacts_dir).quarantine_dir
        print(f"  quarantine:  {quarantine}  (one JSON line per row)")
    print(f"  runs:        recorded in {instance.root_directory}")
    if through := getattr(args, "through", None):
        print(f"  stopped after {through}: run again without --through for the rest")
    print(f"  look at it:  {ui_command(settings)}   (Dagster UI on http://127.0.0.1:3000)")
    paths = ArtifactLayout(settings.artifacts_dir)
    if result.blocked:
        reasons = sorted(set(result.blocked.values()))
        print(f"\n{len(result.blocked)} asset partitions were not run: " + "; ".join(reasons))
        if refresh is not None and refresh.held:
            print("  retrain the outdated checkpoints: rar refresh --include-training")
        else:
            print("  fix the data (or raise the check's threshold) and run again")
        return 1
    if any(bare_name(s.asset) == names.RETRIEVAL_EVAL for s in result.steps):
        print("\n" + _report_text(paths, "table"))
        print(f"  chart:       {paths.evaluation_chart}")
        print(f"  report:      {paths.evaluation_report}  (rar report --format json)")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from rar_pipeline.core.corpus.ingest import validate_corpus
    from rar_pipeline.core.corpus.validation import Validation

    settings = settings_from_args(args)
    layout = discover(settings.data_root)
    reports = validate_corpus(layout, tasks=args.tasks, image_check=settings.corpus.image_policy(),
                              progress=sys.stderr.isatty())  # fmt: skip
    validation = Validation(layout, reports)
    print(validation.as_json() if args.json else validation.as_text(args.show))
    return 1 if args.strict and validation.quarantined else 0


def _report_text(paths: ArtifactLayout, fmt: str) -> str:
    from rar_pipeline.core.evaluation.report import markdown, read_report, text_table

    report = read_report(paths.evaluation_report)
    if fmt == "json":
        return json.dumps(report["rows"], indent=2)
    rows = report["rows"]
    parts = []
    for setting in dict.fromkeys(r["setting"] for r in rows):
        chosen = [r for r in rows if r["setting"] == setting]
        title = f"{report['info'].get('corpus', '')} test split, {setting} pools".strip()
        body = markdown(chosen) if fmt == "markdown" else text_table(chosen)
        parts.append((f"### {title}\n\n" if fmt == "markdown" else f"{title}\n") + body)
    return "\n\n".join(parts) if parts else "(the evaluation has no rows)"


def _report(args: argparse.Namespace) -> int:
    print(_report_text(ArtifactLayout(settings_from_args(args).artifacts_dir), args.format))
    return 0


def _compact(args: argparse.Namespace) -> int:
    from rar_pipeline.core.enhance.postgres_store import vacuum
    from rar_pipeline.core.enhance.store import SqliteStore

    paths = settings_from_args(args).corpus.artifacts()
    if paths.caches.shared:
        print(f"{paths.caches}: {vacuum(paths.cache_url):,} entries (VACUUM ANALYZE)")
        return 0
    root = paths.cache_dir
    stores = sorted(root.rglob("*.sqlite")) if root.is_dir() else []
    if not stores:
        print(f"no cache under {root}")
        return 0
    for path in stores:
        before = sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))
        with SqliteStore(path, on_damage=lambda m: print(f"  {m}")) as store:
            rows = store.compact()
        after = sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))
        print(f"{path.relative_to(root)}: {rows} entries, {before:,} -> {after:,} bytes")
    return 0


def _prompts(args: argparse.Namespace) -> int:
    from rar_pipeline.core.enhance.prompt_file import to_toml

    options = settings_from_args(args).enhance
    print(to_toml(options.prompt_set()), end="")  # a bad file: ValueError naming file:line
    if options.prompts:
        print(f"# checked: {options.prompts}", file=sys.stderr)
    return 0


def _search(args: argparse.Namespace) -> int:
    from rar_pipeline.core.search.query import SearchQuery, check_query_image
    from rar_pipeline.defs.searchers import Searchers

    image = check_query_image(args.image) if args.image else None
    query = SearchQuery(args.text, image, args.task)  # refuses an empty query
    searchers = Searchers.from_settings(settings_from_args(args))
    result = searchers.get(args.config).search(
        query, args.k, hybrid=args.hybrid, modality=args.modality, pool=args.pool
    )
    if args.format == "json":
        print(json.dumps(result.as_dict(), indent=2))
        return 0
    print(result.as_text())
    return 0


def _sync_tracking(args: argparse.Namespace) -> int:
    from rar_pipeline.defs.resources import resources_from_settings
    from rar_pipeline.defs.resources.tracking_journal import pending, replay

    mlflow = resources_from_settings(settings_from_args(args))["mlflow"]
    journals = pending(Path(mlflow.journal_dir))
    if not journals:
        print(f"nothing to sync in {mlflow.journal_dir}")
        return 0
    # replaying must reach MLflow: no journal for the replay itself
    store = type(mlflow)(**{**mlflow.model_dump(), "journal_dir": ""})
    for folder in journals:
        run_id = replay(folder, store)
        print(f"{folder.name}: synced to {mlflow.tracking_uri} as run {run_id}")
    return 0


def _serve(args: argparse.Namespace, preload: str = "full") -> int:
    import uvicorn

    from rar_pipeline.defs.searchers import Searchers
    from rar_pipeline.web.app import create_app
    from rar_pipeline.web.guard import is_loopback

    settings = settings_from_args(args)
    searchers = Searchers.from_settings(settings)
    allowed = list(settings.search.allowed_hosts)
    if not is_loopback(args.host) and args.host not in ("0.0.0.0", "::"):
        allowed.append(args.host)  # the address it was told to serve on is its own name
    app = create_app(searchers, settings.search.model_copy(update={"allowed_hosts": allowed}))
    print(f"loading the {preload} index and its models ...", flush=True)
    app.state.search.worker.submit(searchers.open, preload).result()  # on the search thread
    if not is_loopback(args.host):
        print(
            f"warning: serving on {args.host}: anyone who can reach this machine can search "
            "and upload images (there is no authentication); it answers to the host names "
            f"localhost, 127.0.0.1{''.join(', ' + h for h in allowed)} (--allowed-hosts)",
            flush=True,
        )
    print(f"search page: http://{args.host}:{args.port}  (Ctrl-C stops it)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def _ui(args: argparse.Namespace) -> int:
    """`dagster dev` on a workspace with one code location per corpus (`defs.workspace`)."""
    from rar_pipeline.defs.workspace import exec_dagster_dev, write_workspace

    settings = load_settings()
    roots = args.data or [settings.data_root]
    for root in roots:
        discover(root)  # fail fast on a path that holds no corpus
    folder = settings.dagster_home / "workspace"
    workspace = write_workspace(folder, roots, settings.storage.layout().root)
    print(f"{len(roots)} code locations in {workspace}; UI on http://127.0.0.1:{args.port}")
    sys.stdout.flush()
    exec_dagster_dev(workspace, settings.dagster_home, args.port)


def _worker(args: argparse.Namespace) -> int:
    """A Celery worker on the given queues (`stack.celery_app`), in place of this process."""
    from rar_pipeline.defs.workloads import QUEUE_NAMES

    if not load_settings().cluster.on_workers:
        print("rar worker: set RAR_CELERY_BROKER_URL to the broker the runs send steps to",
              file=sys.stderr)  # fmt: skip
        return 2
    queues = args.queue or list(QUEUE_NAMES)
    name = args.name or "-".join(queues)
    command = [
        sys.executable, "-m", "celery", "-A", "rar_pipeline.stack.celery_app", "worker",
        "--queues", ",".join(queues), "--hostname", f"{name}@%h",
        "--concurrency", str(args.concurrency), "--loglevel", "INFO",
    ]  # fmt: skip
    print(f"worker {name} on queues {', '.join(queues)}")
    sys.stdout.flush()
    os.execv(sys.executable, command)


def _stack(args: argparse.Namespace) -> int:
    """`rar stack up` (until stopped) or `rar stack demo` (`stack.deployment`, `stack.demo`)."""
    import signal

    from rar_pipeline.core.demo.builder import DemoConfig
    from rar_pipeline.core.settings import KNOBS
    from rar_pipeline.stack.deployment import stack

    # SIGTERM unwinds like Ctrl-C, so that every server the stack started is stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    project = load_settings().storage.layout().root
    instance_yaml = project / "deploy" / "dagster.yaml"
    if not instance_yaml.is_file():
        print(f"rar stack: {instance_yaml} not found (run it from the project's clone)",
              file=sys.stderr)  # fmt: skip
        return 2
    if args.action == "up":
        folder = args.folder or project / ".stack"
        with stack(folder, instance_yaml, workers=args.workers, webserver_port=args.port) as up:
            print(up.describe(), flush=True)
            stop = {signal.SIGINT, signal.SIGTERM}  # blocked now: the servers are started
            signal.pthread_sigmask(signal.SIG_BLOCK, stop)
            (Path(folder) / "pid").write_text(str(os.getpid()))  # what `make stack-down` stops
            signal.sigwait(stop)
            print("stopping the stack ...", flush=True)
        (Path(folder) / "pid").unlink(missing_ok=True)
        return 0
    from rar_pipeline.stack.demo import cluster_demo

    given = {k.env: str(getattr(args, k.dest)) for k in KNOBS
             if getattr(args, k.dest, None) is not None}  # fmt: skip
    config = DemoConfig(n_train_products=args.train_products, n_test_products=args.test_products,
                        train_queries_per_task=args.train_queries,
                        test_queries_per_task=args.test_queries, seed=args.seed)  # fmt: skip
    return cluster_demo(instance_yaml, config, workers=args.workers, settings_env=given,
                        report=lambda paths: _report_text(paths, "table"))  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `rar` command; returns the exit code."""
    args = parse_args(argv)
    try:
        if args.command in COMMANDS:
            return COMMANDS[args.command](args)
        settings = settings_from_args(args)
        if args.command in ("run", "refresh"):
            discover(settings.data_root)  # fail fast, before Dagster starts, on a wrong path
            return _run_graph(settings, args, build_demo=None)
        if args.command == "demo":
            demo_config = {
                "n_train_products": args.train_products,
                "n_test_products": args.test_products,
                "train_queries_per_task": args.train_queries,
                "test_queries_per_task": args.test_queries,
                "seed": args.seed,
                "force": args.force,
            }
            return _run_graph(settings, args, build_demo=demo_config)
    except (LayoutError, OSError, ValueError, KeyError) as exc:
        # a SearchError too: it names what to fix (the query, or the asset to materialize)
        print(f"rar: error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        print(f"rar: error: {exc}", file=sys.stderr)
        if args.command not in ("run", "demo", "refresh"):
            return 2
        # a failed step (defs.launch.StepFailed): Dagster recorded the run
        print("  the run's full log is in the Dagster UI: make ui -> Runs", file=sys.stderr)
        return 1
    return 2


# the commands that do not run the graph
COMMANDS = {
    "validate": _validate,
    "compact-cache": _compact,
    "sync-tracking": _sync_tracking,
    "report": _report,
    "prompts": _prompts,
    "search": _search,
    "serve": _serve,
    "ui": _ui,
    "worker": _worker,
    "stack": _stack,
}


if __name__ == "__main__":
    sys.exit(main())
