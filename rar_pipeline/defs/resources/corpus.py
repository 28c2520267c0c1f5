"""`CorpusResource`: the data root a run reads, the artifacts it writes, the validation policy.

Its fields and methods are `core.corpus.config.CorpusConfig`'s, inherited, plus the object
store's endpoint. Where the data root or the artifacts are in object storage, a step works
on local copies (`staged`, `core.mirror`). It is a real filesystem in tests too.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import dagster as dg

from rar_pipeline.core.corpus.config import CorpusConfig
from rar_pipeline.core.corpus.mbeir import DATA_FOLDERS, CorpusLayout
from rar_pipeline.core.mirror import Mirror, filesystem_for, mounted
from rar_pipeline.core.object_store import is_object_store

logger = logging.getLogger(__name__)
# artifacts folders a step never copies: LanceDB reads and writes the store itself, and the
# caches are a database of their own (RAR_CACHE_URL) or this machine's
NOT_COPIED = ("lancedb", "cache")


class CorpusResource(dg.ConfigurableResource, CorpusConfig):
    """The corpus a run reads, where its outputs go, and how strictly it is validated."""

    s3_endpoint_url: str = ""
    s3_region: str = ""

    def mirrors(self) -> list[Mirror]:
        """The local copies of whichever of the data root and artifacts are in a store."""
        copies = []
        if is_object_store(self.data_root):
            fs, path = filesystem_for(self.data_root, self.s3_endpoint_url, self.s3_region)
            copies.append(Mirror(fs, path, self.root, only=DATA_FOLDERS))
        if is_object_store(self.artifacts_dir):
            fs, path = filesystem_for(self.artifacts_dir, self.s3_endpoint_url, self.s3_region)
            copies.append(Mirror(fs, path, self.artifacts().root, skip=NOT_COPIED))
        return copies

    def current_layout(self) -> CorpusLayout:
        """`layout()` of the data root as it is now: in a store, its files pulled first."""
        for copy in self.mirrors()[:1] if is_object_store(self.data_root) else []:
            copy.pull()
        return self.layout()

    @contextlib.contextmanager
    def staged(self) -> Iterator[None]:
        """One step's work on local copies: pulled first, pushed if the step succeeds.

        Nothing is pushed when the step raises: the store keeps what the last successful
        step wrote. Images of a data root in a store are fetched as they are opened.
        """
        copies = self.mirrors()
        for copy in copies:
            logger.info("pulled %s: %s", copy.remote, copy.pull())
        with mounted(*copies):
            yield
        for copy in copies:
            logger.info("pushed %s: %s", copy.remote, copy.push())
