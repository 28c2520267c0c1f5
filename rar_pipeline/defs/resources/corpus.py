"""`CorpusResource`: the data root a run reads, the artifacts it writes, the validation policy.

Its fields and methods are `core.corpus.config.CorpusConfig`'s, inherited. It is a real
filesystem in tests too, on temp dirs.
"""

from __future__ import annotations

import dagster as dg

from rar_pipeline.core.corpus.config import CorpusConfig


class CorpusResource(dg.ConfigurableResource, CorpusConfig):
    """The corpus a run reads, where its outputs go, and how strictly it is validated."""
