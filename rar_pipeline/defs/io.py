"""What every asset body does around its core function: read inputs, show progress, hash.

Inputs are read from the paths `core.layout.ArtifactLayout` gives; a missing input is a
`dg.Failure` that names the asset to materialize first.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
from tqdm.auto import tqdm

from rar_pipeline.core import names
from rar_pipeline.core.corpus.records import Candidate, Query
from rar_pipeline.core.corpus.tables import frame_to_records
from rar_pipeline.core.files import values_hash
from rar_pipeline.core.layout import ArtifactLayout
from rar_pipeline.core.retrieval.options import TrainOptions
from rar_pipeline.core.retrieval.train import Observer
from rar_pipeline.defs.resources.tracking_rules import RunLogger

# the metadata entry in which each asset says, in one line, what it did (`rar run` prints it)
SUMMARY = "summary"


def require_input(path: Path, what: str) -> Path:
    """`path`, or a `dg.Failure` naming the asset to materialize first (`what`)."""
    if not path.is_file():
        raise dg.Failure(f"{path} does not exist: {names.materialize(what, first=True)}")
    return path


def input_file(paths: ArtifactLayout, asset: str, key: str) -> Path:
    """The file of partition `key` of a partitioned upstream `asset`, which must exist."""
    files = {
        names.CANDIDATE_POOL: paths.pool,
        names.QUERIES: paths.queries,
        names.CORPUS_CAPTIONS: paths.captions,
        names.ENHANCED_CORPUS: paths.enhanced_corpus,
        names.ENHANCED_QUERIES: paths.enhanced_queries,
    }
    return require_input(files[asset](key), f"{asset}[{key}]")


def read_input(path: Path, what: str) -> pd.DataFrame:
    """An upstream asset's table; `what` names it (e.g. ``candidate_pool[shard]``)."""
    return pd.read_parquet(require_input(path, what))


def read_records(path: Path, record_type: type, what: str) -> list[Any]:
    """An upstream table as records (`Candidate`, `Query`)."""
    return frame_to_records(read_input(path, what), record_type)


def ingested_tasks(context: dg.AssetExecutionContext, corpus: Any, why: str) -> list[str]:
    """The query tasks ingested so far (a run may ingest a subset); warns of the others.

    Raises:
        dagster.Failure: no task has been ingested yet.
    """
    paths, layout = corpus.artifacts(), corpus.layout()
    tasks = [t for t in layout.queries if paths.queries(t).is_file()]
    if not tasks:
        raise dg.Failure("no query task has been materialized: "
                         + names.materialize(names.QUERIES, first=True))  # fmt: skip
    if skipped := sorted(set(layout.queries) - set(tasks)):
        context.log.warning(f"{why} without un-ingested tasks: {skipped}")
    return tasks


def read_queries(corpus: Any, tasks: list[str]) -> list[Query]:
    """Every query (all splits) of these ingested tasks."""
    paths = corpus.artifacts()
    return [
        q for t in tasks for q in read_records(paths.queries(t), Query, f"{names.QUERIES}[{t}]")
    ]


def read_pools(corpus: Any) -> dict[str, list[Candidate]]:
    """Every pool shard's candidates (each shard must have been ingested)."""
    paths = corpus.artifacts()
    return {
        shard: read_records(paths.pool(shard), Candidate, f"{names.CANDIDATE_POOL}[{shard}]")
        for shard in corpus.layout().pools
    }


@contextmanager
def progress_bar(desc: str, total: int, unit: str = " items") -> Iterator[Any]:
    """A bar on a terminal, nothing in captured logs; yields its `update`."""
    with tqdm(total=total, desc=desc, unit=unit, disable=None, mininterval=1.0, leave=False) as bar:
        yield bar.update


@contextmanager
def training_observer(run: RunLogger, desc: str, options: TrainOptions) -> Iterator[Observer]:
    """A trainer observer: a progress bar and MLflow metrics.

    The bar shows steps, loss, validation recall and samples/s; MLflow gets loss,
    temperature and throughput per step and recall per validation.
    """
    recall = f"val_recall_at_{options.recall_k}"
    shown: dict[str, float] = {}
    with tqdm(desc=desc, unit=" steps", disable=None, mininterval=1.0, leave=False) as bar:

        def observe(kind: str, step: int, metrics: dict[str, float]) -> None:
            run.log_metrics(metrics, step=step)
            if kind == "step":
                bar.update(1)
                shown.update(loss=metrics["loss"], samples_per_s=metrics["samples_per_s"])
            else:
                shown[recall] = metrics[recall]
            bar.set_postfix({k: f"{v:.3g}" for k, v in shown.items()}, refresh=False)

        yield observe


def data_version(frame: pd.DataFrame, column: str) -> dg.DataVersion:
    """A hash of what downstream consumes: unchanged outputs leave descendants fresh."""
    return dg.DataVersion(values_hash(frame[column].tolist()))


# Metadata is stored per event in run and event storage and shown in the UI: item text
# (which may be megabytes per row) is clipped to this many characters wherever it is shown.
CELL_CHARS = 200


def clip(value: Any, limit: int = CELL_CHARS) -> str:
    """A value as one short line for a table cell or a log message."""
    text = str(value if value is not None else "")
    text = text[: limit + 1].replace("|", "/").replace("\n", " ⏎ ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def markdown_table(header: list[str], rows: list[list[Any]]) -> dg.MetadataValue:
    """A markdown table whose every cell is clipped."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(clip(cell) for cell in row) + " |" for row in rows]
    return dg.MetadataValue.md("\n".join(lines))


def samples_table(rows: list[tuple[str, Any, Any]]) -> dg.MetadataValue:
    """A markdown table of (id, before, after) samples."""
    return markdown_table(["id", "before", "after"], [list(row) for row in rows])
