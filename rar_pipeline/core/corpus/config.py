"""The corpus a run reads, where its outputs go, and how strictly it is validated.

One section (`CorpusConfig`): the settings loader, `rar` flags, `CorpusResource` and
docs/configuration.md are made from its fields (`core.config`).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from rar_pipeline.core.config import Section, setting
from rar_pipeline.core.corpus.images import ImageCheck, ImageCheckLevel
from rar_pipeline.core.corpus.mbeir import CorpusLayout, discover
from rar_pipeline.core.layout import ArtifactLayout
from rar_pipeline.core.object_store import is_object_store


class CorpusConfig(Section):
    """The corpus: its data root, its outputs, and its validation policy."""

    data_root: str = setting(
        "", "the M-BEIR data root to read (a folder, or an s3:// URI)", env="RAR_DATA_ROOT",
        flag="--data", shown="data/demo under the project",
    )  # fmt: skip
    artifacts_dir: str = setting(
        "", "where this corpus' outputs go (a folder, or an s3:// URI)",
        env="RAR_ARTIFACTS_DIR", flag="--artifacts",
        shown="artifacts/<data root folder name> under the project",
    )  # fmt: skip
    work_dir: str = setting(
        "", "where a process keeps its local copies of an s3:// data root and artifacts",
        env="RAR_WORK_DIR", shown="rar-work in the system's temp folder",
    )  # fmt: skip
    cache_url: str = setting(
        "", "where the caches keep their entries: empty for SQLite files under the "
        "artifacts (one host), or a PostgreSQL URL that workers on many hosts share "
        "(postgresql://user@host:5432/db)", env="RAR_CACHE_URL",
        shown="SQLite files in <artifacts dir>/cache",
    )  # fmt: skip
    image_check: ImageCheckLevel = setting(
        ImageCheckLevel.DECODE, "how hard validation looks at images: decode (catches "
        "truncated files), header, exists (for very large pools), off",
        env="RAR_IMAGE_CHECK", flag="--image-check",
    )  # fmt: skip
    strict_paths: bool = setting(
        False, "resolve symlinks in paths from data files and page requests, refusing any "
        "whose real file is outside the data root (for roots others can write to)",
        env="RAR_STRICT_PATHS", flag="--strict-paths",
    )  # fmt: skip
    max_pixels: int = setting(
        ImageCheck().max_pixels, "images with more pixels are refused (decompression bombs)",
        ge=1,
    )  # fmt: skip
    max_quarantine_rate: float = setting(
        0.05, "the quarantine-rate checks warn above this share of a file's rows", ge=0, le=1
    )
    block_quarantine_rate: float = setting(
        1.0, "above this share a shard or task is blocked (its downstream does not run): a "
        "file mostly bad is likely the wrong one. 1.0: off, bad rows never stop a run",
        ge=0, le=1,
    )  # fmt: skip

    @property
    def root(self) -> Path:
        """The data root as read: its folder, or this process' local copy of it."""
        if is_object_store(self.data_root):
            return self.local_copy(self.data_root)
        return Path(self.data_root).resolve()

    @property
    def name(self) -> str:
        """The corpus' name: its data root's folder name (as in `artifacts/<name>`)."""
        return PurePosixPath(urlparse(self.data_root).path).name or self.root.name

    @property
    def remote(self) -> bool:
        """Whether the data root or the artifacts are in object storage."""
        return is_object_store(self.data_root) or is_object_store(self.artifacts_dir)

    def local_copy(self, uri: str) -> Path:
        """Where this process keeps its copy of `uri`: <work dir>/<pid>/<bucket>/<prefix>.

        One copy per process: two steps running at once on one machine never share one.
        """
        parsed = urlparse(uri)
        work = Path(self.work_dir) if self.work_dir else Path(tempfile.gettempdir()) / "rar-work"
        return work / str(os.getpid()) / parsed.netloc / parsed.path.strip("/")

    def layout(self) -> CorpusLayout:
        return discover(self.root)

    def artifacts(self) -> ArtifactLayout:
        """The artifacts as written: their folder, or this process' local copy of them."""
        if is_object_store(self.artifacts_dir):
            return ArtifactLayout(self.local_copy(self.artifacts_dir), cache_url=self.cache_url)
        return ArtifactLayout(Path(self.artifacts_dir), cache_url=self.cache_url)

    def image_policy(self) -> ImageCheck:
        return ImageCheck(
            level=self.image_check, max_pixels=self.max_pixels, strict_paths=self.strict_paths
        )
