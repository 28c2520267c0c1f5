"""Validating the fields of one M-BEIR row: ids, modality, text, image path, references.

Every check raises `RowError` with the quarantine reason; `core.corpus.readers` turns it
into a `QuarantinedRow` and goes on with the next row.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rar_pipeline.core.corpus.images import ImageCheck, check_image
from rar_pipeline.core.corpus.mbeir import resolve_in_root
from rar_pipeline.core.corpus.records import Modality, Reason


class RowError(Exception):
    """A row fails validation: the reason it is quarantined with, and why."""

    def __init__(self, reason: Reason, detail: str, row_id: str | None = None) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.row_id = row_id


# ---------------------------------------------------------------------------
# field validation


def require(obj: dict[str, Any], name: str, kinds: tuple[type, ...], optional: bool) -> Any:
    """The field's value, checked for presence and type (bools are never numbers)."""
    if name not in obj:
        if optional:
            return None
        raise RowError(Reason.MISSING_FIELD, f"field {name!r} is missing")
    value = obj[name]
    if value is None and optional:
        return None
    if not isinstance(value, kinds) or isinstance(value, bool):
        want = " or ".join(k.__name__ for k in kinds) + (" or null" if optional else "")
        raise RowError(
            Reason.WRONG_TYPE, f"field {name!r} should be {want}, got {type(value).__name__}"
        )
    return value


def modality_of(value: Any) -> Modality:
    """A modality string as M-BEIR writes it ("image, text" is accepted)."""
    if not isinstance(value, str):
        raise RowError(Reason.WRONG_TYPE, f"modality should be a string, got {value!r}")
    try:
        return Modality(value.strip().replace(" ", ""))
    except ValueError:
        allowed = ", ".join(repr(m.value) for m in Modality)
        raise RowError(
            Reason.UNKNOWN_MODALITY, f"modality {value!r} is not one of {allowed}"
        ) from None


def check_modality_fields(modality: Modality, txt: str | None, img_path: str | None) -> None:
    """The declared modality must match the text and image the row has."""
    has_txt = bool(txt and txt.strip())
    has_img = bool(img_path and img_path.strip())
    if modality.has_text and not has_txt:
        raise RowError(Reason.MODALITY_MISMATCH, f"modality {modality.value!r} but no text")
    if modality.has_image and not has_img:
        raise RowError(Reason.MODALITY_MISMATCH, f"modality {modality.value!r} but no image")
    if not modality.has_text and has_txt:
        raise RowError(Reason.MODALITY_MISMATCH, f"modality {modality.value!r} but text present")
    if not modality.has_image and has_img:
        raise RowError(
            Reason.MODALITY_MISMATCH, f"modality {modality.value!r} but an image path present"
        )


@dataclass(frozen=True)
class ItemFields:
    """The field names one side of M-BEIR uses for an item's id, modality, text and image."""

    id: str
    modality: str
    txt: str
    img_path: str

    def parse(self, obj: dict[str, Any]) -> tuple[str, Modality, str | None, str | None]:
        """(id, modality, txt, img_path), validated; text or image absent per the modality."""
        item_id = require(obj, self.id, (str,), optional=False)
        if not item_id.strip():
            raise RowError(Reason.MISSING_FIELD, f"field {self.id!r} is empty")
        modality = modality_of(require(obj, self.modality, (str,), optional=False))
        txt = require(obj, self.txt, (str,), optional=True)
        img_path = require(obj, self.img_path, (str,), optional=True)
        check_modality_fields(modality, txt, img_path)
        return (
            item_id,
            modality,
            txt if modality.has_text else None,
            img_path if modality.has_image else None,
        )

    @staticmethod
    def check_image(
        root: Path, modality: Modality, img_path: str | None, image_check: ImageCheck
    ) -> None:
        """Quarantine reasons for the item's image: outside the root, missing, broken."""
        if not modality.has_image or img_path is None:
            return
        if any(ord(ch) < 32 or ord(ch) == 127 for ch in img_path):
            raise RowError(Reason.BAD_PATH, f"image path {img_path!r} has control characters")
        try:
            path = resolve_in_root(root, img_path, strict=image_check.strict_paths)
        except ValueError as exc:
            raise RowError(Reason.PATH_ESCAPES_ROOT, str(exc)) from None
        problem = check_image(path, image_check)
        if problem is not None:
            reason, detail = problem
            raise RowError(Reason(reason), f"{img_path}: {detail}")


CANDIDATE_FIELDS = ItemFields("did", "modality", "txt", "img_path")
QUERY_FIELDS = ItemFields("qid", "query_modality", "query_txt", "query_img_path")


def src_content(value: Any) -> str | None:
    """`src_content` as a string (objects are kept as sorted JSON)."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True)


def cand_refs(obj: dict[str, Any], name: str) -> tuple[str, ...]:
    """Accept both `"9:10"` and `{"did": "9:10", ...}` entries, as M-BEIR variants write."""
    value = obj.get(name)
    if value is None:
        return ()
    if not isinstance(value, list):
        raise RowError(Reason.WRONG_TYPE, f"field {name!r} should be a list")
    refs: list[str] = []
    for entry in value:
        if isinstance(entry, str) and entry:
            refs.append(entry)
        elif isinstance(entry, dict) and isinstance(entry.get("did"), str) and entry["did"]:
            refs.append(entry["did"])
        else:
            raise RowError(
                Reason.WRONG_TYPE,
                f"{name} entries should be 'did' strings or objects with a 'did', got {entry!r}",
            )
    return tuple(refs)
