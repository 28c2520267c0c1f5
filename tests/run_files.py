"""An independent reading of TREC run and qrels files: Recall@K computed by hand, to check
the figures the evaluation reports (which come from trec_eval through ir-measures)."""

from __future__ import annotations

from pathlib import Path


def recall_from_files(run_file: Path, qrels_file: Path, qids: set[str] | None, k: int):
    """(UniIR Recall@k, trec recall@k) over `qids` (None: every qrels query).

    Ranks are the file's scores, best first; a query with no line in the run scores 0.
    """
    positives: dict[str, set[str]] = {}
    for line in Path(qrels_file).read_text().splitlines():
        qid, _, did, rel = line.split()
        if int(rel) > 0:
            positives.setdefault(qid, set()).add(did)
    ranked: dict[str, list[tuple[float, str]]] = {}
    for line in Path(run_file).read_text().splitlines():
        qid, _, did, _, score, _ = line.split()
        ranked.setdefault(qid, []).append((float(score), did))
    chosen = [q for q in positives if qids is None or q in qids]
    hits = shares = 0.0
    for qid in chosen:
        top = {d for _, d in sorted(ranked.get(qid, []), reverse=True)[:k]}
        hits += bool(positives[qid] & top)
        shares += len(positives[qid] & top) / len(positives[qid])
    return hits / len(chosen), shares / len(chosen)
