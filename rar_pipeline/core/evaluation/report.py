"""The ablation report: rows (task x query type x config), a markdown table, a chart.

A row's figures are means over its queries; `query_type` "all" is every query of the task.
`p_value` (on the rows of `none` and `inference-only`) is the paired randomization test of
`full` against that config on `SIGNIFICANCE_MEASURE`, over the same queries; `p_values`
holds it for every K.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

from rar_pipeline.core import names
from rar_pipeline.core.evaluation.metrics import KS, MEASURES, randomization_test
from rar_pipeline.core.files import write_atomic

ORDER = ["none", "corpus", "query", "full", "inference-only"]
COMPARED = {"none": "full", "inference-only": "full"}  # row's config -> tested against
SIGNIFICANCE_MEASURE = "recall_at_5"  # M-BEIR's headline figure
ALL = "all"


def _groups(per_query: pd.DataFrame) -> list[tuple[str, str, pd.DataFrame]]:
    out = []
    for task, frame in per_query.groupby("task", sort=True):
        types = sorted(frame["query_type"].unique())
        out += [(str(task), str(t), frame[frame["query_type"] == t]) for t in types]
        if len(types) > 1:
            out.append((str(task), ALL, frame))
    return out


def _p_values(group: pd.DataFrame, config: str, against: str) -> dict[str, float] | None:
    mine = group[group["config"] == config].set_index("qid")
    theirs = group[group["config"] == against].set_index("qid")
    if mine.empty or theirs.empty:
        return None
    qids = mine.index.intersection(theirs.index)
    return {
        m: randomization_test(theirs.loc[qids, m].to_numpy(), mine.loc[qids, m].to_numpy())
        for m in (f"recall_at_{k}" for k in KS)
    }


def summarize(
    per_query: pd.DataFrame, setting: str, run_file: Callable[[str, str], str]
) -> list[dict[str, Any]]:
    """Report rows from `evaluate.score_runs`' per-query figures.

    Args:
        per_query: one row per (config, query).
        setting: "local" or "global".
        run_file: (config, task) -> the path of the run file the figures come from.
    """
    rows = []
    for task, query_type, group in _groups(per_query):
        for config, frame in sorted(
            group.groupby("config"), key=lambda kv: ORDER.index(kv[0]) if kv[0] in ORDER else 99
        ):
            p_values = _p_values(group, config, COMPARED[config]) if config in COMPARED else None
            rows.append(
                {
                    "task": task,
                    "query_type": query_type,
                    "config": config,
                    "aligned": bool(frame["aligned"].iloc[0]),
                    "setting": setting,
                    **{m: float(frame[m].mean()) for m in MEASURES},
                    "n_queries": len(frame),
                    "p_value": p_values[SIGNIFICANCE_MEASURE] if p_values else None,
                    "p_value_against": COMPARED.get(config) if p_values else None,
                    "p_values": p_values,
                    "run_file": run_file(config, task),
                }
            )
    return rows


def _configs(rows: Sequence[dict[str, Any]]) -> list[str]:
    present = {r["config"] for r in rows}
    return [c for c in ORDER if c in present] + sorted(present - set(ORDER))


def _cells(rows: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Header and body of the ablation table; the best figure of a row is marked **bold**."""
    configs = _configs(rows)
    header = ["task", "query type", "n", *configs, "p full vs none", "p full vs inf-only"]
    header[-2:] = [f"{h} (@1 / @5)" for h in header[-2:]]
    frame = pd.DataFrame(rows)
    several = frame["setting"].nunique() > 1
    if several:
        header.insert(0, "setting")
    body = []
    for (setting, task, qtype), group in frame.groupby(["setting", "task", "query_type"]):
        by = group.set_index("config")
        best = {f"recall_at_{k}": by[f"recall_at_{k}"].max() for k in KS}
        cells = []
        for config in configs:
            if config not in by.index:
                cells.append("-")
                continue
            figures = []
            for k in KS:
                value = by.loc[config, f"recall_at_{k}"]
                text = f"{value:.2f}"
                figures.append(f"**{text}**" if value == best[f"recall_at_{k}"] else text)
            cells.append(" / ".join(figures))
        p = [
            " / ".join(f"{by.loc[c, 'p_values'][f'recall_at_{k}']:.2g}" for k in (1, 5))
            if c in by.index and isinstance(by.loc[c, "p_values"], dict)
            else "-"
            for c in ("none", "inference-only")
        ]
        row = [task, qtype, str(int(by["n_queries"].iloc[0])), *cells, *p]
        body.append([setting, *row] if several else row)
    return header, body


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The ablation as a markdown table: Recall@1 / @5 / @10 per config, best in bold."""
    if not rows:
        return "(no test queries were evaluated)"
    header, body = _cells(rows)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    ks = "/".join(f"@{k}" for k in KS)
    lines.append(
        f"\nCells: Recall{ks} (a hit if any positive is in the top K), best in bold. p: paired "
        "randomization test of full against none / inference-only on Recall@1 and @5."
    )
    return "\n".join(lines)


def text_table(rows: Sequence[dict[str, Any]]) -> str:
    """The ablation table for a terminal (no markup)."""
    if not rows:
        return "(no test queries were evaluated)"
    header, body = _cells(rows)
    body = [[cell.replace("**", "") for cell in row] for row in body]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in [header]]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in body]
    lines.append(
        f"cells: Recall@{'/'.join(map(str, KS))}; p: paired randomization test of full "
        "against none / inference-only on Recall@1 and @5"
    )
    return "\n".join(lines)


def chart(rows: Sequence[dict[str, Any]], path: Path, title: str = "") -> Path:
    """A PNG of the ablation: Recall@1 and Recall@5 per task and query type, per config."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame = pd.DataFrame(rows)
    configs = _configs(rows)
    labels = [f"{t}\n{q}" for t, q in frame[["task", "query_type"]].drop_duplicates().to_numpy()]
    groups = frame[["task", "query_type"]].drop_duplicates().to_numpy()
    fig, axes = plt.subplots(2, 1, figsize=(max(6.0, 1.3 * len(groups) + 2), 6.5), sharex=True)
    width = 0.8 / max(1, len(configs))
    for ax, k in zip(axes, (1, 5), strict=True):
        for i, config in enumerate(configs):
            by = frame[frame["config"] == config].set_index(["task", "query_type"])
            values = [
                by.loc[(t, q), f"recall_at_{k}"] if (t, q) in by.index else 0 for t, q in groups
            ]
            ax.bar([x + i * width for x in range(len(groups))], values, width, label=config)
        ax.set_ylabel(f"Recall@{k}")
        ax.set_ylim(0, 1.05)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(ncol=len(configs), fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0))
    fig.suptitle(title or "RAR ablation (test split)")
    axes[1].set_xticks([x + 0.4 - width / 2 for x in range(len(groups))], labels, fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    # a palette PNG is a third of the size: it is embedded in Dagster's event log
    image = Image.open(buffer).convert("RGB").quantize(colors=64)
    write_atomic(path, lambda tmp: image.save(tmp, format="PNG", optimize=True))
    return path


def write_report(path: Path, rows: Sequence[dict[str, Any]], info: dict[str, Any]) -> Path:
    """The report as JSON: {"info": ..., "rows": [...]}, written atomically."""
    text = json.dumps({"info": info, "rows": list(rows)}, indent=2, default=str)
    return write_atomic(path, lambda tmp: tmp.write_text(text))


def read_report(path: Path) -> dict[str, Any]:
    """A report written by `write_report`.

    Raises:
        FileNotFoundError: no evaluation has been run for this corpus.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(
            f"no evaluation report at {path}: {names.materialize(names.RETRIEVAL_EVAL, first=True)}"
            " (rar run, or make demo)"
        )
    return json.loads(Path(path).read_text())


def task_level(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (setting, task, config): the task's "all" row, or its only query type."""
    multi = {(r["setting"], r["task"]) for r in rows if r["query_type"] == "all"}
    return [r for r in rows if (r["setting"], r["task"]) not in multi or r["query_type"] == "all"]


def macro_recall(rows: list[dict[str, Any]], setting: str, k: int = 5) -> dict[str, float]:
    """Each config's Recall@k averaged over the tasks (one row per task), in one setting."""
    level = [r for r in task_level(rows) if r["setting"] == setting]
    return {
        c: sum(r[f"recall_at_{k}"] for r in mine) / len(mine)
        for c in dict.fromkeys(r["config"] for r in level)
        if (mine := [r for r in level if r["config"] == c])
    }
