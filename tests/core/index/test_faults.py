"""Index faults, each shown to lose nothing: two writers on one LanceDB table, and an update
killed half-way (in its own process, with SIGKILL, and at each step of the update)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from rar_pipeline.core.corpus.records import Candidate, Modality
from rar_pipeline.core.index.ann import AnnPlan
from rar_pipeline.core.index.build import update_index
from rar_pipeline.core.index.configs import INDEXED
from rar_pipeline.core.index.rows import Provenance, arrow_rows, index_rows
from rar_pipeline.core.search.store import TableSearch
from rar_pipeline.defs.resources import LanceDBResource
from rar_pipeline.defs.resources.lancedb import SCALAR_INDEXES
from tests.word_encoder import WordEncoder

PLAN = AnnPlan()
INDEXED_COLUMNS = {(c,) for c in SCALAR_INDEXES}  # pools and modality
ROOT = Path(__file__).resolve().parents[3]  # the project: `tests` imports from here


def pools(n_pools: int, per_pool: int) -> dict[str, list[Candidate]]:
    return {
        f"task{p}_cand_pool": [
            Candidate(f"{p}:{i}", Modality.TEXT, f"item {i} of pool {p} red wool", None)
            for i in range(per_pool)
        ]
        for p in range(n_pools)
    }


def rows_of(pool_map):
    return index_rows(INDEXED["none"], pool_map, Provenance("none@1"))


def _writer(uri: str, shard: int, rounds: int) -> None:
    """One run writing its own shard's rows, a few commits in a row."""
    store = LanceDBResource(uri=uri)
    rows = rows_of(pools(8, 25))
    mine = rows[[f"task{shard}_cand_pool" in p for p in rows["pools"]]].reset_index(drop=True)
    encoder = WordEncoder()
    for r in range(rounds):
        part = mine.iloc[r::rounds].reset_index(drop=True)
        vectors = encoder.embed_text(*part["text"])
        store.upsert("none", arrow_rows(part, vectors), part.iloc[0:0][["did"]])


def test_concurrent_writers_on_one_table_lose_no_rows(tmp_path):
    uri = str(tmp_path / "lance")
    # the table exists (as after a first index build), then four runs write at once
    first = rows_of({"task0_cand_pool": pools(1, 25)["task0_cand_pool"]})
    LanceDBResource(uri=uri).upsert(
        "none", arrow_rows(first, WordEncoder().embed_text(*first["text"])), first.iloc[0:0]
    )
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_writer, args=(uri, s, 5)) for s in range(1, 5)]
    for w in writers:
        w.start()
    for w in writers:
        w.join(timeout=300)
        assert w.exitcode == 0
    keys = LanceDBResource(uri=uri).row_hashes("none").read_all().to_pandas()
    assert len(keys) == 125 and not keys.duplicated(["did"]).any()
    assert sorted({p for pools in keys["pools"] for p in pools}) == [
        f"task{p}_cand_pool" for p in range(5)
    ]


class SlowEncoder(WordEncoder):
    """Embeds a batch, then says so on stdout and dawdles (time to be killed)."""

    def embed(self, items):
        out = super().embed(items)
        sys.stdout.write("batch\n")
        sys.stdout.flush()
        time.sleep(0.5)
        return out


def _update_slowly(uri: str, root: str) -> None:
    update_index(LanceDBResource(uri=uri), "none", rows_of(pools(4, 50)), SlowEncoder(),
                 Path(root), PLAN, batch_size=20)  # fmt: skip


def test_an_update_killed_with_sigkill_is_completed_by_the_next(tmp_path):
    uri = str(tmp_path / "lance")
    # a table with the first shard, as after an earlier update
    update_index(LanceDBResource(uri=uri), "none", rows_of(pools(1, 50)), WordEncoder(),
                 tmp_path, PLAN)  # fmt: skip
    code = (
        f"import sys; sys.path.insert(0, {str(ROOT)!r}); from tests.core.index.test_faults "
        f"import _update_slowly; _update_slowly({uri!r}, {str(tmp_path)!r})"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert child.stdout.readline().strip() == b"batch"  # embedding has begun
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    store = LanceDBResource(uri=uri)
    assert store.row_hashes("none").read_all().num_rows == 50  # the old rows, whole
    encoder = WordEncoder()
    done = update_index(store, "none", rows_of(pools(4, 50)), encoder, tmp_path, PLAN)
    assert (done.written, done.unchanged) == (150, 50) and len(encoder.embedded) == 150
    assert store.row_hashes("none").read_all().num_rows == 200
    assert {tuple(i.columns) for i in store.connect().open_table("none").list_indices()} == {
        ("text",),
        *INDEXED_COLUMNS,
    }


# (dying while embedding is the SIGKILL test above: an exception there is caught per item)
@pytest.mark.parametrize("step", ["upsert", "build_indexes"])
def test_an_update_that_dies_at_any_step_is_completed_by_the_next(tmp_path, monkeypatch, step):
    store = LanceDBResource(uri=str(tmp_path / "lance"))
    update_index(store, "none", rows_of(pools(1, 30)), WordEncoder(), tmp_path, PLAN)
    grown = rows_of(pools(3, 30))

    class Died(Exception):
        pass

    def die(*args, **kwargs):
        raise Died(step)

    encoder = WordEncoder()
    with monkeypatch.context() as patch:
        patch.setattr(type(store), step, die)
        with pytest.raises(Died):
            update_index(store, "none", grown, encoder, tmp_path, PLAN)
    again = WordEncoder()
    done = update_index(store, "none", grown, again, tmp_path, PLAN)
    # what the dead update had committed counts; nothing else is redone
    committed = 60 if step == "build_indexes" else 0
    assert (done.written, done.unchanged) == (60 - committed, 30 + committed)
    table = store.connect().open_table("none")
    assert table.count_rows() == 90
    assert {tuple(i.columns) for i in table.list_indices()} == {("text",), *INDEXED_COLUMNS}
    hits = store.search_vectors("none", again.embed_text("item 5 of pool 2 red wool"), 1,
                                TableSearch(None, PLAN))  # fmt: skip
    assert hits["did"].tolist() == ["2:5"]
    assert np.isclose(hits["score"].iloc[0], 1.0)
