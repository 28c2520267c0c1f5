"""The `rar` command line: its subcommands and flags (`cli.py` runs them).

Every settings flag, its help, type and bounds come from the settings' fields
(`core.settings`); the commands add only what is theirs (`--tasks`, `--plan`, `-k`).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from rar_pipeline.core.config import Knob
from rar_pipeline.core.corpus.records import Modality
from rar_pipeline.core.demo.builder import DemoConfig
from rar_pipeline.core.names import GROUPS
from rar_pipeline.core.search.query import MAX_K
from rar_pipeline.core.settings import BY_DEST, KNOBS
from rar_pipeline.defs.workloads import QUEUE_NAMES

# The sections whose flags `run`, `demo`, `search` and `serve` take (`serve` also the
# search page's); every flag, its help, type and bounds come from the section's fields.
GRAPH_SECTIONS = ("corpus", "vlm", "enhance", "retriever", "training")
LOCATIONS = ("corpus__data_root", "corpus__artifacts_dir")  # flags each command adds itself


def _add_knob(parser: argparse._ActionsContainer, knob: Knob, **overrides) -> None:
    """A flag for a setting: unset (None) unless given, so the environment can decide."""

    def parse(raw: str) -> object:
        try:
            return knob.check(raw, knob.flag)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc).split(": ", 1)[-1]) from None

    parse.__name__ = knob.key  # what argparse names in its errors
    choices = f" ({' | '.join(knob.choices)})" if knob.choices else ""
    parser.add_argument(
        knob.flag,
        dest=knob.dest,
        type=parse,
        metavar=knob.path[-1].upper(),
        help=f"{knob.help}{choices} (default: ${knob.env}, else {knob.default_text()})",
        **overrides,
    )


def _add_sections(parser: argparse.ArgumentParser, sections: Sequence[str]) -> None:
    """A group of flags per section, every field of each (locations excepted)."""
    for section in sections:
        group = parser.add_argument_group(
            f"{section} settings (flag, then environment, then default; docs/configuration.md)"
        )
        for knob in KNOBS:
            if knob.section == section and knob.dest not in LOCATIONS:
                _add_knob(group, knob)


def bounded(low: int, high: int) -> object:
    """An argparse type: a whole number from `low` to `high`, else a one-line error."""

    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{raw[:20]!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{raw[:20]} is not between {low} and {high}")
        return value

    return parse


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse `rar` arguments."""
    parser = argparse.ArgumentParser(
        prog="rar", description="Reasoning-Augmented Representations pipeline"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _graph_commands(sub)
    _corpus_commands(sub)
    _search_commands(sub)
    return parser.parse_args(argv)


def _locations(parser: argparse.ArgumentParser, *, data_required: bool = False) -> None:
    _add_knob(parser, BY_DEST["corpus__data_root"], required=data_required)
    _add_knob(parser, BY_DEST["corpus__artifacts_dir"])


def _demo_sizes(parser: argparse.ArgumentParser) -> None:
    """The demo corpus' size and seed (`DemoConfig`'s fields)."""
    defaults, count = DemoConfig(), bounded(1, 100_000)
    parser.add_argument("--train-products", type=count, default=defaults.n_train_products)
    parser.add_argument("--test-products", type=count, default=defaults.n_test_products)
    for split in ("train", "test"):
        parser.add_argument(f"--{split}-queries", type=count, help="per task",
                            default=getattr(defaults, f"{split}_queries_per_task"))  # fmt: skip
    parser.add_argument("--seed", type=bounded(0, 2**32 - 1), default=defaults.seed)


def _graph_commands(sub: argparse._SubParsersAction) -> None:
    """`demo` and `run`: the whole graph."""
    demo = sub.add_parser("demo", help="build the demo corpus and run the pipeline on it")
    demo.add_argument(
        "--data",
        dest="corpus__data_root",
        help="where to write the demo corpus (default: data/demo under the project)",
    )
    _add_knob(demo, BY_DEST["corpus__artifacts_dir"])
    demo.add_argument("--force", action="store_true", help="rebuild the corpus even if present")
    _demo_sizes(demo)

    run = sub.add_parser("run", help="run the pipeline on an M-BEIR-layout directory")
    _locations(run, data_required=True)
    run.add_argument("--tasks", nargs="+", help="query tasks, e.g. mbeir_cirr_task7 (default: all)")
    run.add_argument(
        "--through",
        choices=GROUPS,
        help="stop after this stage, e.g. enhancement to caption and rewrite now and train "
        "later (default: the whole graph, through evaluation)",
    )
    refresh = sub.add_parser(
        "refresh",
        help="run only what is outdated (a prompt edit, a new setting) and what reads it",
    )
    _locations(refresh)
    refresh.add_argument(
        "--include-training", action="store_true",
        help="retrain outdated checkpoints too (default: report them)",
    )  # fmt: skip
    refresh.add_argument(
        "--plan", action="store_true", help="print what would run, and run nothing"
    )
    for command in (demo, run, refresh):
        _add_sections(command, GRAPH_SECTIONS)


def _corpus_commands(sub: argparse._SubParsersAction) -> None:
    """`validate`, `report`, `sync-tracking`, `compact-cache`: a corpus' files and outputs."""
    validate = sub.add_parser("validate", help="print the quarantine summary of a corpus")
    _add_knob(validate, BY_DEST["corpus__data_root"], required=True)
    validate.add_argument("--tasks", nargs="+", help="query tasks (default: all)")
    _add_knob(validate, BY_DEST["corpus__image_check"])
    _add_knob(validate, BY_DEST["corpus__strict_paths"])
    validate.add_argument("--show", type=bounded(0, 10**9), default=20,
                          help="how many quarantined rows to list (default 20)")  # fmt: skip
    validate.add_argument("--json", action="store_true", help="print a JSON summary instead")
    validate.add_argument(
        "--strict", action="store_true", help="exit 1 when any row is quarantined"
    )
    report = sub.add_parser(
        "report", help="print the latest evaluation of a corpus (what retrieval_eval wrote)"
    )
    report.add_argument(
        "--format", choices=["table", "json", "markdown"], default="table", help="default: table"
    )
    sync = sub.add_parser(
        "sync-tracking", help="replay into MLflow the runs journaled while it could not be reached"
    )
    compact = sub.add_parser(
        "compact-cache",
        help="reclaim the caches' free space (run it while no pipeline run is writing)",
    )
    for command in (report, sync, compact):
        _locations(command)
    prompts = sub.add_parser(
        "prompts", help="check a prompts file and print the prompts in force (TOML, to edit)"
    )
    _add_knob(prompts, BY_DEST["enhance__prompts"])
    ui = sub.add_parser(
        "ui", help="the Dagster UI on 127.0.0.1 with one code location per corpus, side by side"
    )
    ui.add_argument(
        "--data", action="append", type=Path, metavar="DIR",
        help="a corpus' data root; repeat for several (default: the settings' data root)",
    )  # fmt: skip
    ui.add_argument("--port", type=bounded(1, 65535), default=3000, help="default: 3000")
    worker = sub.add_parser(
        "worker", help="a Celery worker that runs the steps sent to its queues "
        "(RAR_CELERY_BROKER_URL; docs/scaling.md)",
    )  # fmt: skip
    worker.add_argument(
        "--queue", action="append", choices=QUEUE_NAMES, metavar="QUEUE",
        help=f"a queue to take steps from, repeat for several: {', '.join(QUEUE_NAMES)} "
        "(default: all)",
    )  # fmt: skip
    worker.add_argument(
        "--concurrency", type=bounded(1, 256), default=1, help="steps at once (default: 1)"
    )
    worker.add_argument("--name", help="the worker's name; Celery adds @host (default: its queues)")
    stack = sub.add_parser(
        "stack", help="the cluster deployment on this machine, throwaway: PostgreSQL, Redis, "
        "SeaweedFS, MLflow, Dagster, Celery workers (docs/scaling.md)",
    )  # fmt: skip
    actions = stack.add_subparsers(dest="action", required=True)
    up = actions.add_parser("up", help="start the stack and keep it up until stopped")
    up.add_argument("--folder", type=Path, help="where it keeps everything (default: .stack)")
    up.add_argument("--port", type=bounded(1, 65535), default=3000, help="the Dagster UI's port")
    demo = actions.add_parser(
        "demo", help="start a stack, run the demo on it, print the ablation table, stop it"
    )
    _demo_sizes(demo)
    _add_sections(demo, GRAPH_SECTIONS)
    for action in (up, demo):
        action.add_argument("--workers", type=bounded(1, 16), default=2, help="default: 2")


def _search_commands(sub: argparse._SubParsersAction) -> None:
    """`search` and `serve`: a corpus' indexes, as the pipeline built them."""
    search = sub.add_parser(
        "search", help="search a corpus' index, enhancing the query as the pipeline does"
    )
    search.add_argument("text", nargs="?", help="the query's words (omit for an image query)")
    search.add_argument("--image", type=Path, help="the query's image")
    search.add_argument(
        "-k", type=bounded(1, MAX_K), default=10, help=f"results to show, 1-{MAX_K} (default 10)"
    )
    search.add_argument("--format", choices=["table", "json"], default="table")
    search.add_argument(
        "--config",
        default="full",
        help="which index: none, corpus, query, full or inference-only (default: full)",
    )
    search.add_argument("--hybrid", action="store_true", help="fuse dense and full-text hits (RRF)")
    search.add_argument("--modality", nargs="+", choices=[m.value for m in Modality],
                        help="only candidates of these modalities")  # fmt: skip
    search.add_argument("--pool", help="only this pool's candidates (default: every pool)")
    search.add_argument("--task", help="apply this query task's query-type override")
    serve = sub.add_parser("serve", help="the search page, on 127.0.0.1 unless told otherwise")
    serve.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1 (this machine)")
    serve.add_argument("--port", type=bounded(1, 65_535), default=8765, help="default 8765")
    _add_sections(serve, ["search"])
    for command in (search, serve):
        _locations(command)
        _add_sections(command, GRAPH_SECTIONS)
