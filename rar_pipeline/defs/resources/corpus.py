"""`CorpusResource`: the data root a run reads, the artifacts it writes, the validation policy.

It is a real filesystem in tests too, on temp dirs.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from rar_pipeline.core.corpus.images import ImageCheck, ImageCheckLevel
from rar_pipeline.core.corpus.mbeir import CorpusLayout, discover
from rar_pipeline.core.layout import ArtifactLayout


class CorpusResource(dg.ConfigurableResource):
    """The corpus a run reads, where its outputs go, and how strictly it is validated.

    Attributes:
        data_root: an M-BEIR data root (query/, cand_pool/, qrels/, mbeir_images/...).
        artifacts_dir: where this corpus' Parquet outputs, quarantine files and tables go.
        image_check: how hard validation looks at images: decode | header | exists | off.
        max_pixels: images larger than this are quarantined.
        max_quarantine_rate: the quarantine-rate asset checks warn above this share.
        strict_paths: resolve symlinks in paths from data files and requests: a path whose
            real file is outside the data root is quarantined (ingest) or refused (the
            search page). For data roots untrusted people can write to.
        block_quarantine_rate: above this share a shard or task is blocked (its
            quarantine_ceiling check fails and its downstream does not run): a file that
            is mostly bad is likely the wrong file, or in the wrong format. Off (1.0) by
            default, since bad rows must never stop a whole run unless you ask; what reads
            every shard (queries, training pairs, indexes) waits for a blocked one.
    """

    data_root: str
    artifacts_dir: str
    image_check: str = ImageCheckLevel.DECODE.value
    max_pixels: int = ImageCheck.max_pixels
    max_quarantine_rate: float = 0.05
    strict_paths: bool = False
    block_quarantine_rate: float = 1.0

    @property
    def root(self) -> Path:
        return Path(self.data_root).resolve()

    @property
    def name(self) -> str:
        """The corpus' name: its data root's folder name (as in `artifacts/<name>`)."""
        return self.root.name

    def layout(self) -> CorpusLayout:
        return discover(self.data_root)

    def artifacts(self) -> ArtifactLayout:
        return ArtifactLayout(Path(self.artifacts_dir))

    def image_policy(self) -> ImageCheck:
        return ImageCheck(
            level=ImageCheckLevel(self.image_check),
            max_pixels=self.max_pixels,
            strict_paths=self.strict_paths,
        )
