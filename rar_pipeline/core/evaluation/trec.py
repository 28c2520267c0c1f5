"""TREC run and qrels files, as trec_eval reads them.

- run: `qid Q0 did rank score run_id`, one line per retrieved candidate, ranks from 1 and
  scores strictly decreasing within a query. trec_eval orders by score and re-orders tied
  scores by document id; pytrec_eval (what ir-measures runs) compares them as float32. So
  scores are float32 values here, and a score not below the one before it is stepped down
  by `TIE_STEP` or one float32 step, whichever is larger.
- qrels: `qid 0 did relevance`. M-BEIR's own qrels carry a fifth column (the task id) that
  trec_eval rejects.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from rar_pipeline.core.files import write_atomic

Ranking = Sequence[tuple[str, float]]  # (did, score), best first
TIE_STEP = np.float32(1e-7)
_TOKEN = re.compile(r"\S+")


def strictly_decreasing(scores: Sequence[float]) -> list[float]:
    """`scores` (best first) as float32 values, each strictly below the one before."""
    out: list[np.float32] = []
    for score in np.asarray(scores, dtype=np.float32):
        if out and score >= out[-1]:
            score = np.float32(out[-1] - max(TIE_STEP, np.spacing(abs(out[-1]))))
        out.append(score)
    return [float(s) for s in out]


def _check_token(value: str, what: str) -> str:
    if not _TOKEN.fullmatch(value):
        raise ValueError(f"{what} {value!r} has whitespace: trec_eval splits lines on it")
    return value


def format_run(rankings: Mapping[str, Ranking], run_id: str) -> str:
    """Run-file text: queries in the order given, each with its ranking."""
    _check_token(run_id, "run id")
    lines = []
    for qid, ranking in rankings.items():
        scores = strictly_decreasing([score for _, score in ranking])
        for rank, ((did, _), score) in enumerate(zip(ranking, scores, strict=True), start=1):
            lines.append(
                f"{_check_token(qid, 'query id')} Q0 {_check_token(did, 'candidate id')} "
                f"{rank} {score!r} {run_id}"
            )
    return "\n".join(lines) + ("\n" if lines else "")


def write_run(path: Path, rankings: Mapping[str, Ranking], run_id: str) -> Path:
    """Write a run file atomically (a reader never sees half of it)."""
    text = format_run(rankings, run_id)
    return write_atomic(path, lambda tmp: tmp.write_text(text))


def read_run(path: Path) -> dict[str, dict[str, float]]:
    """A run file as {qid: {did: score}} (the shape trec_eval tools take)."""
    run: dict[str, dict[str, float]] = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        parts = line.split()
        if len(parts) != 6:
            raise ValueError(f"{path}:{number}: expected 6 columns, got {len(parts)}")
        qid, _, did, _, score, _ = parts
        run.setdefault(qid, {})[did] = float(score)
    return run


def write_qrels(path: Path, qrels: Mapping[str, Mapping[str, int]]) -> Path:
    """Write qrels in trec_eval's four columns, atomically."""
    lines = [
        f"{_check_token(qid, 'query id')} 0 {_check_token(did, 'candidate id')} {int(rel)}"
        for qid, docs in qrels.items()
        for did, rel in docs.items()
    ]
    text = "\n".join(lines) + ("\n" if lines else "")
    return write_atomic(path, lambda tmp: tmp.write_text(text))


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    """A four-column qrels file as {qid: {did: relevance}}."""
    qrels: dict[str, dict[str, int]] = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        parts = line.split()
        if len(parts) != 4:
            raise ValueError(f"{path}:{number}: expected 4 columns, got {len(parts)}")
        qrels.setdefault(parts[0], {})[parts[2]] = int(parts[3])
    return qrels
