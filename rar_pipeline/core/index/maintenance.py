"""Index maintenance, apart from the updates that make rows searchable: when and what.

An index update writes rows and creates the indexes a table lacks, nothing more: LanceDB
searches the rows an index does not cover exactly, beside the indexed ones, so new and
changed rows are found as soon as they are written. Folding them into the indexes is
maintenance, run by the `index_maintenance` sensor when rows wait or on a schedule, never
on the path of a new shard:

- **delta**: the rows no index covers get delta index segments of their own (Lance's
  `optimize_indices(num_indices_to_merge=0)`): the IVF partitions are kept, only the new
  rows are assigned and graphed. It costs what the new rows cost (0.1-0.2 s for 1,000
  rows, benchmarks/RESULTS.md "Index freshness"), where folding them into an IVF_HNSW_SQ
  index rebuilds its graphs (LanceDB's `optimize()`: minutes at 1M rows).
- **merge deltas**: every delta segment is searched on its own, so once a table has more
  than `max_deltas` of them they are merged into one (the oldest, full index untouched).
- **full** (scheduled, off-peak): LanceDB's `optimize()`: compacts the data files
  (rows deleted or replaced by updates stay masked until then), merges every segment into
  one index and drops old table versions.
"""

from __future__ import annotations

from dataclasses import dataclass

from rar_pipeline.core.config import Section, setting


class MaintenancePolicy(Section):
    """Index maintenance: when rows are folded into a table's indexes (`maintain_indexes`)."""

    min_unindexed_rows: int = setting(
        1, "rows outside a table's indexes that make the index_maintenance sensor fold "
        "them in (as delta segments); until then they are searched exactly", ge=1,
    )  # fmt: skip
    max_deltas: int = setting(
        4, "delta segments an index may have before maintenance merges them into one "
        "(each is searched on its own: more of them, slower searches)", ge=1,
    )  # fmt: skip


@dataclass(frozen=True)
class IndexHealth:
    """How far a table's indexes are behind its rows.

    Attributes:
        rows: rows in the table.
        unindexed_rows: the most rows any index of the table does not cover (searched
            exactly until maintenance folds them in).
        deltas: the most delta segments any index has (segments beyond its first).
        indexes: index name -> its segments.
    """

    rows: int
    unindexed_rows: int
    deltas: int
    indexes: dict[str, int]


@dataclass(frozen=True)
class Maintenance:
    """What maintenance does to a table (`plan`): each flag one step, in this order."""

    delta: bool = False
    merge_deltas: bool = False
    full: bool = False

    def __bool__(self) -> bool:
        return self.delta or self.merge_deltas or self.full


def plan(health: IndexHealth, policy: MaintenancePolicy, *, full: bool = False) -> Maintenance:
    """The steps that bring a table's indexes up to its rows under `policy`.

    A `full` maintenance (the schedule's) compacts and merges everything, whatever the
    table's state; otherwise rows waiting get a delta and too many deltas are merged. A
    table without indexes has nothing to maintain (its update creates them).
    """
    if not health.indexes:
        return Maintenance()
    if full:
        return Maintenance(full=True)
    delta = health.unindexed_rows >= policy.min_unindexed_rows
    deltas_after = health.deltas + (1 if delta else 0)
    return Maintenance(delta=delta, merge_deltas=deltas_after > policy.max_deltas)


def needs_maintenance(health: IndexHealth, policy: MaintenancePolicy) -> bool:
    """Whether the sensor should launch maintenance for this table."""
    return bool(plan(health, policy))


DEFAULT_POLICY = MaintenancePolicy()
