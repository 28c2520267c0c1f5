"""Domain records of an M-BEIR corpus: candidates, queries, qrels, instructions, quarantine."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Generic, TypeVar

T = TypeVar("T")


class Modality(StrEnum):
    """The modality strings M-BEIR writes in `modality` / `query_modality`."""

    TEXT = "text"
    IMAGE = "image"
    IMAGE_TEXT = "image,text"

    @property
    def has_text(self) -> bool:
        return self in (Modality.TEXT, Modality.IMAGE_TEXT)

    @property
    def has_image(self) -> bool:
        return self in (Modality.IMAGE, Modality.IMAGE_TEXT)


# (query modality, candidate modality) of each task id, as in UniIR's instruction file.
TASK_MODALITIES: dict[int, tuple[str, str]] = {
    0: ("text", "image"),
    1: ("text", "text"),
    2: ("text", "image,text"),
    3: ("image", "text"),
    4: ("image", "image"),
    5: ("image", "image,text"),
    6: ("image,text", "text"),
    7: ("image,text", "image"),
    8: ("image,text", "image,text"),
}


def normalize_modality(value: str) -> str:
    """'text, image' and 'image,text' name the same modality; return the canonical spelling."""
    return ",".join(sorted(part.strip() for part in value.split(",") if part.strip()))


def task_id_of(task: str) -> int | None:
    """The task id in a task name such as ``mbeir_cirr_task7``."""
    head, _, tail = task.rpartition("_task")
    return int(tail) if head and tail.isdigit() else None


@dataclass(frozen=True)
class Candidate:
    """One row of a candidate pool (`cand_pool/**/*.jsonl`)."""

    did: str
    modality: Modality
    txt: str | None
    img_path: str | None
    src_content: str | None = None


@dataclass(frozen=True)
class Query:
    """One row of a query file (`query/<split>/mbeir_<dataset>_task<k>_<split>.jsonl`)."""

    qid: str
    modality: Modality
    txt: str | None
    img_path: str | None
    pos_cand_list: tuple[str, ...]
    neg_cand_list: tuple[str, ...] = ()
    split: str = "test"
    task_id: int | None = None
    src_content: str | None = None

    @property
    def key(self) -> str:
        """Unique within a task: a qid may recur in another split with other text."""
        return f"{self.split}/{self.qid}"


@dataclass(frozen=True)
class Qrel:
    """One line of a qrels file: `qid 0 did relevance task_id`."""

    qid: str
    did: str
    relevance: int
    task_id: int


@dataclass(frozen=True)
class Instruction:
    """One row of `instructions/query_instructions.tsv`."""

    query_modality: str
    cand_modality: str
    dataset_name: str
    dataset_id: str
    prompts: tuple[str, ...]


class Reason(StrEnum):
    """Why a row was quarantined. The value is what quarantine files and metadata show."""

    BAD_ENCODING = "bad_encoding"
    BAD_JSON = "bad_json"
    NOT_AN_OBJECT = "not_an_object"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    UNKNOWN_MODALITY = "unknown_modality"
    MODALITY_MISMATCH = "modality_mismatch"
    PATH_ESCAPES_ROOT = "path_escapes_root"
    BAD_PATH = "bad_path"
    IMAGE_MISSING = "image_missing"
    IMAGE_UNREADABLE = "image_unreadable"
    IMAGE_TRUNCATED = "image_truncated"
    IMAGE_TOO_LARGE = "image_too_large"
    IMAGE_ASPECT_RATIO = "image_aspect_ratio"  # too thin: models stretch the short side
    DUPLICATE_ID = "duplicate_id"
    UNKNOWN_REFERENCE = "unknown_reference"
    BAD_QREL_LINE = "bad_qrel_line"
    BAD_INSTRUCTION_LINE = "bad_instruction_line"


@dataclass(frozen=True)
class QuarantinedRow:
    """A row kept out of the corpus, with where it came from and why."""

    source: str  # path relative to the data root
    line: int  # 1-based line number in `source`
    row_id: str | None  # qid / did when it could be read
    reason: Reason
    detail: str
    raw: str  # the line as read, truncated


@dataclass(frozen=True)
class DroppedRef:
    """A reference a kept query lost: its id is in no pool (or was quarantined)."""

    qid: str
    side: str  # "positive" or "negative"
    did: str
    why: str


@dataclass
class ReadResult(Generic[T]):
    """Rows that passed validation, the ones quarantined, and references dropped from rows."""

    rows: list[T]
    quarantined: list[QuarantinedRow]
    dropped: list[DroppedRef] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.rows) + len(self.quarantined)

    @property
    def quarantine_rate(self) -> float:
        return len(self.quarantined) / self.total if self.total else 0.0
