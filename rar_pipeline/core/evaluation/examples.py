"""Test queries beside their enhanced form and their top results, for people to look at.

Rankings come from the evaluation's run files, candidate texts from each config's index
table (what that config embedded), images from the data root. Used by the evaluation
notebook.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from rar_pipeline.core.corpus.images import thumbnail as small_copy
from rar_pipeline.core.corpus.mbeir import resolve_in_root
from rar_pipeline.core.evaluation.evaluate import load_test_queries
from rar_pipeline.core.evaluation.trec import read_run
from rar_pipeline.core.layout import ArtifactLayout


@dataclass
class Hit:
    """One retrieved candidate as its config indexed it."""

    did: str
    score: float
    text: str | None
    image: Path | None
    positive: bool


@dataclass
class Example:
    """A test query, its enhanced form, and each config's top results."""

    task: str
    qid: str
    query_type: str
    txt: str | None
    enhanced_txt: str | None
    image: Path | None
    results: dict[str, list[Hit]] = field(default_factory=dict)


def _image(root: Path, rel: object) -> Path | None:
    if not isinstance(rel, str) or not rel:
        return None
    try:
        return resolve_in_root(root, rel)
    except ValueError:
        return None


def _text(found: pd.DataFrame, did: str, column: str) -> str | None:
    value = found.loc[did, column] if did in found.index else None
    return value if isinstance(value, str) else None


def load_examples(
    paths: ArtifactLayout,
    root: Path,
    lancedb_uri: str,
    tasks: Sequence[str],
    *,
    per_task: int = 1,
    configs: Sequence[str] = ("none", "full"),
    k: int = 3,
    setting: str = "local",
) -> list[Example]:
    """The first `per_task` test queries of each task with each config's top `k` results."""
    import lancedb

    db = lancedb.connect(lancedb_uri)
    queries = load_test_queries(paths, tasks)
    out = []
    for task, group in queries.groupby("task", sort=True):
        runs = {c: read_run(paths.run_file(c, str(task), setting)) for c in configs}
        for row in group.head(per_task).itertuples():
            example = Example(str(task), str(row.qid), str(row.query_type), row.txt,
                              row.enhanced_txt, _image(root, row.img_path))  # fmt: skip
            for config in configs:
                ranked = sorted(runs[config].get(example.qid, {}).items(), key=lambda kv: -kv[1])
                top = ranked[:k]
                dids = ", ".join("'" + d.replace("'", "''") + "'" for d, _ in top) or "''"
                table = db.open_table(config)
                found = table.search().where(f"did IN ({dids})").limit(None).to_pandas()
                found = found.drop_duplicates("did").set_index("did")
                example.results[config] = [
                    Hit(
                        d,
                        s,
                        _text(found, d, "text"),
                        _image(root, _text(found, d, "img_path")),
                        d in set(row.positives),
                    )
                    for d, s in top
                ]
            out.append(example)
    return out


def thumbnail(path: Path | None, size: int = 96) -> str:
    """An <img> tag holding a small JPEG of `path` (empty when there is no image)."""
    if path is None or not Path(path).is_file():
        return ""
    try:
        data = base64.b64encode(small_copy(path, size, "JPEG")).decode()
    except ValueError:  # not an image, or too large to decode safely
        return ""
    return f'<img src="data:image/jpeg;base64,{data}" width="{size}">'


def examples_html(examples: Sequence[Example], clip: int = 160) -> str:
    """An HTML table: each query (text, enhanced text, image) and each config's results."""
    configs = list(examples[0].results) if examples else []

    def text(value: object) -> str:
        value = value if isinstance(value, str) else ""
        return html.escape(value if len(value) <= clip else value[: clip - 1] + "…")

    head = "".join(f"<th>{html.escape(c)}</th>" for c in configs)
    rows = []
    for ex in examples:
        query = (
            f"<b>{html.escape(ex.task)}</b> ({html.escape(ex.query_type)})<br>{text(ex.txt)}"
            f"<br><i>enhanced:</i> {text(ex.enhanced_txt)}<br>{thumbnail(ex.image)}"
        )
        cells = []
        for config in configs:
            hits = [
                f"{'✅' if h.positive else '❌'} {h.score:.3f} <code>{html.escape(h.did)}</code>"
                f"<br>{thumbnail(h.image, 64)} {text(h.text)}"
                for h in ex.results[config]
            ]
            cells.append("<td>" + "<hr>".join(hits) + "</td>")
        rows.append(f"<tr><td>{query}</td>{''.join(cells)}</tr>")
    return f"<table><tr><th>query</th>{head}</tr>{''.join(rows)}</table>"
