"""Recall@K two ways, per query, from trec_eval (through ir-measures), and significance.

- `recall_at_k`: UniIR's Recall@K, a hit if any positive is in the top K (trec_eval's
  `success.k`). This is the figure M-BEIR papers report.
- `trec_recall_at_k`: the share of a query's positives in its top K (trec_eval's
  `recall.k`). The two differ on tasks whose queries have several positives.

Every query of the qrels counts, retrieved or not (an unranked query scores 0), as
trec_eval's `-c` does. Significance is a paired two-sided randomization (permutation) test
on per-query values, the test Smucker et al. (CIKM 2007) recommend for IR.
"""

from __future__ import annotations

from collections.abc import Mapping

import ir_measures
import numpy as np
import pandas as pd
from ir_measures import R, Success
from scipy import stats

KS = (1, 5, 10)
MEASURES = {
    **{f"recall_at_{k}": Success @ k for k in KS},
    **{f"trec_recall_at_{k}": R @ k for k in KS},
}
SIGNIFICANCE_RESAMPLES = 10_000


def per_query(
    qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Mapping[str, float]]
) -> pd.DataFrame:
    """One row per qrels query (index: qid), one column per `MEASURES` entry."""
    names = {str(m): name for name, m in MEASURES.items()}
    frame = pd.DataFrame(0.0, index=pd.Index(list(qrels), name="qid"), columns=list(MEASURES))
    queries = {q: dict(d) for q, d in run.items() if q in qrels}
    for metric in ir_measures.iter_calc(list(MEASURES.values()), qrels, queries):
        frame.loc[metric.query_id, names[str(metric.measure)]] = metric.value
    return frame


def randomization_test(a: np.ndarray, b: np.ndarray, seed: int = 0) -> float:
    """Two-sided p-value of a paired randomization test on mean(a - b).

    Identical samples (every difference zero) give 1.0.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} vs {len(b)}")
    if len(a) == 0 or not np.any(a != b):
        return 1.0
    result = stats.permutation_test(
        (a, b),
        lambda x, y, axis: np.mean(x - y, axis=axis),
        permutation_type="samples",
        vectorized=True,
        n_resamples=SIGNIFICANCE_RESAMPLES,
        alternative="two-sided",
        rng=np.random.default_rng(seed),
    )
    return float(result.pvalue)
