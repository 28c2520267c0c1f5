"""A search query as a person gives it (text, an image, or both), and the images it brings.

Query images are checked as corpus images are (`core.corpus.images.check_image`, decoded
with the same pixel and aspect bounds). Uploaded bytes are bounded, checked, and stored
under a content-addressed name in one folder, so a page can serve an upload back by a name
that cannot point anywhere else; the folder is kept under a quota, oldest uploads first out.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from rar_pipeline.core import names
from rar_pipeline.core.config import Section, setting
from rar_pipeline.core.corpus.images import ImageCheck, ImageCheckLevel, check_image
from rar_pipeline.core.corpus.records import Modality, Query

MAX_K = 100  # hits a search returns at most: what evaluation ranks per query
QUERY_IMAGE_CHECK = ImageCheck(level=ImageCheckLevel.DECODE)
# formats a query image may have, and the suffix an upload of each is stored under
SUFFIXES = {"PNG": ".png", "JPEG": ".jpg", "GIF": ".gif", "WEBP": ".webp", "BMP": ".bmp"}
UPLOAD_NAME = re.compile(r"^[0-9a-f]{32}\.(png|jpg|gif|webp|bmp)$")


class SearchPageConfig(Section):
    """The search page (`rar serve`): what it accepts, and which host names it answers to."""

    max_upload_mb: int = setting(
        16, "the largest query image, in MiB (a bigger request is refused as it arrives)",
        env="RAR_SEARCH_MAX_UPLOAD_MB", flag="--max-upload-mb", ge=1, le=1024,
    )  # fmt: skip
    upload_quota_mb: int = setting(
        512, "what the kept uploads may take, in MiB; the oldest go first",
        env="RAR_SEARCH_UPLOAD_QUOTA_MB", flag="--upload-quota-mb", ge=1, le=10**7,
    )  # fmt: skip
    allowed_hosts: list[str] = setting(
        default_factory=list, description="host names it answers to besides localhost and "
        "127.0.0.1, comma-separated (serving beyond this machine: --host 0.0.0.0 "
        "--allowed-hosts search.example.org)", env="RAR_SEARCH_ALLOWED_HOSTS",
        flag="--allowed-hosts",
    )  # fmt: skip

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb * 2**20

    @property
    def upload_quota_bytes(self) -> int:
        return self.upload_quota_mb * 2**20


PAGE_DEFAULTS = SearchPageConfig()


class SearchError(ValueError):
    """A search that cannot run; the message says why and what to do.

    Attributes:
        status: the HTTP status the page and the API answer it with (400: the request is at
            fault; 409: the project's state is, and `asset` says what to materialize).
        asset: the asset whose materialization would let the search run, if any.
    """

    def __init__(self, message: str, *, status: int = 400, asset: str | None = None) -> None:
        super().__init__(message)
        self.status, self.asset = status, asset


class IndexUnavailable(SearchError):
    """An index table or retriever checkpoint is missing or cannot be read."""

    def __init__(self, message: str, asset: str) -> None:
        super().__init__(f"{message}: {names.materialize(asset)}", status=409, asset=asset)


@dataclass(frozen=True)
class SearchQuery:
    """What a person searches with.

    Attributes:
        text: the query's words (None or blank: an image-only query).
        image: a checked image file (see `check_query_image`, `save_upload`).
        task: a query task whose query-type override applies (image+text queries whose
            phrasing the question rule routes wrongly); None: the rule decides.
    """

    text: str | None = None
    image: Path | None = None
    task: str | None = None

    def __post_init__(self) -> None:
        text = self.text.strip() if isinstance(self.text, str) else None
        object.__setattr__(self, "text", text or None)
        if self.text is None and self.image is None:
            raise SearchError("a query needs text, an image, or both")

    @property
    def modality(self) -> Modality:
        if self.image is None:
            return Modality.TEXT
        return Modality.IMAGE if self.text is None else Modality.IMAGE_TEXT

    def record(self, qid: str) -> Query:
        """The query as the enhancement stage reads queries (image relative to its folder)."""
        return Query(
            qid=qid,
            modality=self.modality,
            txt=self.text,
            img_path=self.image.name if self.image is not None else None,
            pos_cand_list=(),
            split="search",
        )


def check_query_image(path: Path, check: ImageCheck = QUERY_IMAGE_CHECK) -> Path:
    """The image's absolute path, once it is known to decode within the pixel bound.

    Raises:
        SearchError: missing, not a file, unreadable, truncated or too large.
    """
    path = Path(path).expanduser().absolute()
    problem = check_image(path, check)
    if problem is not None:
        reason, detail = problem
        raise SearchError(f"query image {path}: {reason.replace('_', ' ')} ({detail})")
    return path


def save_upload(
    data: bytes,
    folder: Path,
    *,
    max_bytes: int = PAGE_DEFAULTS.max_upload_bytes,
    quota_bytes: int = PAGE_DEFAULTS.upload_quota_bytes,
    check: ImageCheck = QUERY_IMAGE_CHECK,
) -> Path:
    """Check uploaded image bytes and keep them as `folder/<content hash>.<format>`.

    The same bytes always land at the same name (a repeated upload hits the caches). The
    folder is then trimmed to `quota_bytes`, least recently uploaded first.

    Raises:
        SearchError: empty, over `max_bytes`, not an image of a known format, or failing
            the corpus image check (truncated, too many pixels, too thin).
    """
    if not data:
        raise SearchError("the uploaded image is empty")
    if len(data) > max_bytes:
        raise SearchError(f"the uploaded image is {len(data):,} bytes; the limit is {max_bytes:,}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".upload.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        problem = check_image(Path(tmp), check)
        if problem is not None:
            reason, detail = problem[0], problem[1].replace(tmp, "the upload")  # no paths
            raise SearchError(f"the uploaded image is not usable ({reason.replace('_', ' ')}: "
                              f"{detail})")  # fmt: skip
        with Image.open(tmp) as image:
            suffix = SUFFIXES.get(image.format or "")
        if suffix is None:
            raise SearchError(
                f"the uploaded image's format is not one of {', '.join(sorted(SUFFIXES))}"
            )
        target = folder / f"{hashlib.sha256(data).hexdigest()[:32]}{suffix}"
        os.replace(tmp, target)  # a new modification time: a repeat counts as recent
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    evict_uploads(folder, quota_bytes, keep=target)
    return target


def evict_uploads(folder: Path, quota_bytes: int, keep: Path | None = None) -> list[Path]:
    """Delete the oldest uploads until the folder holds at most `quota_bytes`.

    Returns:
        The uploads deleted. `keep` (the one just saved) is never among them.
    """
    uploads = []
    for path in Path(folder).iterdir():
        if UPLOAD_NAME.match(path.name):
            with contextlib.suppress(FileNotFoundError):  # another request evicted it
                stat = path.stat()
                uploads.append((stat.st_mtime_ns, stat.st_size, path))
    total = sum(size for _, size, _ in uploads)
    deleted = []
    for _, size, path in sorted(uploads):
        if total <= quota_bytes:
            break
        if path == keep:
            continue
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        total -= size
        deleted.append(path)
    return deleted
