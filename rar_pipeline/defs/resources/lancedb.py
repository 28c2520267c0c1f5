"""Vector tables: `LanceDBResource` (real LanceDB, local folder or s3://) and `FakeVectorStore`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import dagster as dg
import numpy as np
import pandas as pd
from pydantic import PrivateAttr


class VectorStore(Protocol):
    """What the pipeline needs from a vector database."""

    def write_table(self, name: str, frame: pd.DataFrame, *, mode: str = "overwrite") -> int: ...

    def table_names(self) -> list[str]: ...

    def count_rows(self, name: str) -> int: ...

    def search(self, name: str, vector: np.ndarray, k: int) -> pd.DataFrame: ...


class LanceDBResource(dg.ConfigurableResource):
    """LanceDB tables at `uri`: a local folder by default, or object storage (s3://...).

    Rows need a `vector` column (fixed-size float32) for `search`.
    """

    uri: str

    def connect(self) -> Any:
        import lancedb

        if "://" not in self.uri:
            Path(self.uri).mkdir(parents=True, exist_ok=True)
        return lancedb.connect(self.uri)

    def write_table(self, name: str, frame: pd.DataFrame, *, mode: str = "overwrite") -> int:
        db = self.connect()
        if mode == "append" and name in self.table_names():
            table = db.open_table(name)
            table.add(frame)
        else:
            table = db.create_table(name, frame, mode="overwrite")
        return table.count_rows()

    def table_names(self) -> list[str]:
        return list(self.connect().list_tables().tables)

    def count_rows(self, name: str) -> int:
        return self.connect().open_table(name).count_rows()

    def search(self, name: str, vector: np.ndarray, k: int) -> pd.DataFrame:
        table = self.connect().open_table(name)
        hits = table.search(np.asarray(vector, dtype=np.float32)).limit(k).to_pandas()
        return hits.rename(columns={"_distance": "distance"})


class FakeVectorStore(dg.ConfigurableResource):
    """In-memory brute-force stand-in for `LanceDBResource` (L2 distance, like LanceDB)."""

    _tables: dict[str, pd.DataFrame] = PrivateAttr(default_factory=dict)

    def write_table(self, name: str, frame: pd.DataFrame, *, mode: str = "overwrite") -> int:
        if mode == "append" and name in self._tables:
            frame = pd.concat([self._tables[name], frame], ignore_index=True)
        self._tables[name] = frame.reset_index(drop=True)
        return len(self._tables[name])

    def table_names(self) -> list[str]:
        return sorted(self._tables)

    def count_rows(self, name: str) -> int:
        return len(self._tables[name])

    def search(self, name: str, vector: np.ndarray, k: int) -> pd.DataFrame:
        table = self._tables[name]
        matrix = np.stack(table["vector"].to_numpy()).astype(np.float32)
        distance = ((matrix - np.asarray(vector, dtype=np.float32)) ** 2).sum(axis=1)
        order = np.argsort(distance, kind="stable")[:k]
        return table.iloc[order].assign(distance=distance[order]).reset_index(drop=True)
