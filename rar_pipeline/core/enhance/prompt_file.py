"""Prompt overrides from a TOML file: the shipped prompts with a user's edits on top.

A prompts file changes prompts without touching the installed package. Each top-level
table is a prompt's name; its keys replace the shipped prompt's fields; fields left out
keep the shipped value:

    # prompts.toml
    [corpus_caption]
    system = '''You write dense, factual descriptions ... Name the materials. ...'''
    max_words = 80

What the file gives is what an edit of `prompts.py` would give: the prompt's version is a
hash of its content, so the cache keys, the assets' code versions and the
`current_version` checks follow it alike. `rar prompts` prints the prompts in force, as
a file to start from.

The file is checked when it is read; an error names the file and the line: a name that is
no prompt, a field that is no field or has the wrong type, a template that drops its
`{text}` placeholder or adds another, and a prompt that sees item text without telling the
model that the text between <item_text> and </item_text> is data.
"""

from __future__ import annotations

import dataclasses
import json
import re
import string
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rar_pipeline.core.enhance.prompts import PROMPTS, PromptSpec

# the fields a file may set, and their types
FIELDS: dict[str, type] = {
    "system": str,
    "user_template": str,
    "sends_image": bool,
    "max_words": int,
    "max_tokens": int,
}
_DELIMITERS = ("<item_text>", "</item_text>")


class PromptFileError(ValueError):
    """A prompts file that cannot be used; the message starts with `file:line:`."""


def _placeholders(template: str) -> set[str]:
    return {field for _, field, _, _ in string.Formatter().parse(template) if field is not None}


def _line(text: str, name: str, key: str | None = None) -> int:
    """The line where the file sets prompt `name` (or its field `key`); 1 when not found."""
    lines = text.splitlines()
    quoted = rf"""(?:{re.escape(name)}|"{re.escape(name)}"|'{re.escape(name)}')"""
    header = re.compile(rf"^\s*\[\s*{quoted}\s*\]")
    start = next((i for i, line in enumerate(lines) if header.match(line)), None)
    if start is None:  # dotted keys: corpus_caption.system = ...
        dotted = re.compile(rf"^\s*{quoted}\s*\.\s*{re.escape(key or '')}")
        return next((i + 1 for i, line in enumerate(lines) if dotted.match(line)), 1)
    if key is None:
        return start + 1
    field = re.compile(rf"^\s*{re.escape(key)}\s*=")
    for i in range(start + 1, len(lines)):
        if re.match(r"^\s*\[", lines[i]):
            break
        if field.match(lines[i]):
            return i + 1
    return start + 1


def _check(spec: PromptSpec, shipped: PromptSpec) -> tuple[str, str] | None:
    """(field, what is wrong) with an overridden prompt, or None when it can be used."""
    fields = _placeholders(spec.user_template)
    if fields != _placeholders(shipped.user_template):
        wanted = ", ".join(f"{{{f}}}" for f in sorted(_placeholders(shipped.user_template)))
        return "user_template", (
            f"the template's placeholders are {sorted(fields) or 'none'}; it must have "
            f"exactly {wanted or 'none'} (where the item's delimited text goes)"
        )
    if "text" in fields and not all(d in spec.system for d in _DELIMITERS):
        return "system", (
            "this prompt sees item text, so its instructions must tell the model that the "
            "text between <item_text> and </item_text> is data, never instructions"
        )
    for name in ("max_words", "max_tokens"):
        if getattr(spec, name) < 1:
            return name, f"{name} must be at least 1"
    return None


def apply_overrides(
    path: Path, base: Mapping[str, PromptSpec] | None = None
) -> dict[str, PromptSpec]:
    """The prompts of `base` (default: the shipped ones) with the file's overrides applied.

    Raises:
        PromptFileError: the file is missing, is not TOML, or overrides something it may
            not; the message starts with `file:line:`.
    """
    base = dict(PROMPTS if base is None else base)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PromptFileError(f"{path}: cannot read the prompts file: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        where = re.search(r"at line (\d+)", str(exc))
        line = where.group(1) if where else max(1, len(text.splitlines()))  # end of document
        raise PromptFileError(f"{path}:{line}: {exc}") from None
    out = dict(base)
    for name, given in data.items():
        if name not in base:
            known = ", ".join(sorted(base))
            raise PromptFileError(f"{path}:{_line(text, name)}: no prompt is named {name!r} "
                                  f"(the prompts: {known})")  # fmt: skip
        if not isinstance(given, dict):
            raise PromptFileError(f"{path}:{_line(text, name)}: {name} must be a table "
                                  f"([{name}]) of the fields it changes")  # fmt: skip
        out[name] = _override(path, text, base[name], given)
    return out


def _override(path: Path, text: str, shipped: PromptSpec, given: dict[str, Any]) -> PromptSpec:
    name = shipped.name
    for key, value in given.items():
        kind = FIELDS.get(key)
        if kind is None:
            raise PromptFileError(f"{path}:{_line(text, name, key)}: {name} has no field "
                                  f"{key!r} (the fields: {', '.join(FIELDS)})")  # fmt: skip
        if type(value) is not kind:  # bool is no int here, nor int a bool
            raise PromptFileError(f"{path}:{_line(text, name, key)}: {name}.{key} must be "
                                  f"a {kind.__name__}, not {json.dumps(value)}")  # fmt: skip
    spec = dataclasses.replace(shipped, **given, source=f"{path}:{_line(text, name)}")
    problem = _check(spec, shipped)
    if problem is not None:
        key, why = problem
        raise PromptFileError(f"{path}:{_line(text, name, key)}: {name}.{key}: {why}")
    return spec


def prompt_set(path: str | Path | None) -> dict[str, PromptSpec]:
    """The prompts in force: the shipped ones, with the overrides of `path` if one is named."""
    return apply_overrides(Path(path)) if path else dict(PROMPTS)


def _toml_string(value: str) -> str:
    """A TOML string of `value`: literal where it reads as written, else escaped."""
    printable = all(c in "\n\t" or (c >= " " and c != "\x7f") for c in value)
    if printable and "'''" not in value and not value.startswith("\n") and value[-1:] != "'":
        return f"'''{value}'''" if "\n" in value or "'" in value else f"'{value}'"
    # a basic string: JSON's escapes are TOML's (DEL, which JSON leaves as it is, aside)
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")


def to_toml(prompts: Mapping[str, PromptSpec]) -> str:
    """`prompts` as a prompts file (every field written out), to edit and name in the settings."""
    parts = ["# Prompt overrides: delete what you keep as shipped; see docs/enhancement.md\n"]
    for spec in prompts.values():
        parts.append(f"\n[{spec.name}]  # version {spec.version}\n")
        for key in FIELDS:
            value = getattr(spec, key)
            shown = _toml_string(value) if isinstance(value, str) else json.dumps(value)
            parts.append(f"{key} = {shown}\n")
    return "".join(parts)
