"""Typed configuration: each component declares its settings once, as a `Section`.

A section is a frozen pydantic model: each field has its type, default, description and
bounds, and `setting(...)` may give it a shorter environment variable or flag than the
generated ones. From the fields alone come:

- the environment variable: `RAR_<SECTION>_<FIELD>` (`RAR_VLM_OPENAI_BASE_URL`), or the
  field's own `env`;
- the `rar` flag: `--<section>-<field>` (`--vlm-openai-base-url`), or the field's `flag`;
- the Dagster resource fields (`defs/resources` subclass the sections);
- `docs/configuration.md` (`configuration_markdown`; a test fails when it is stale).

`Knob` is one such field wherever it sits (nested sections included): what the settings
loader, the CLI and the docs iterate over. No Dagster import.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo


class Section(BaseModel):
    """A component's settings: frozen, no unknown fields, defaults validated."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)


def setting(
    default: Any = ...,
    description: str = "",
    *,
    env: str | None = None,
    flag: str | None = None,
    shown: str | None = None,
    **constraints: Any,
) -> Any:
    """A section field.

    Args:
        default: the default value (or `default_factory=` in `constraints`).
        description: what it means; `--help` and the docs show it.
        env: its environment variable, when not the generated `RAR_<SECTION>_<FIELD>`.
        flag: its `rar` flag, when not the generated `--<section>-<field>`.
        shown: how the docs show a default computed from other settings.
        **constraints: pydantic's (`ge`, `le`, `gt`, `default_factory`, ...).
    """
    extra = {k: v for k, v in {"env": env, "flag": flag, "shown": shown}.items() if v}
    return Field(default, description=description, json_schema_extra=extra, **constraints)


@dataclass(frozen=True)
class Knob:
    """One setting a person can give: a field of a section, at `path`."""

    section: str
    path: tuple[str, ...]  # field names from the section down ("openai", "base_url")
    info: FieldInfo
    annotation: Any

    @property
    def key(self) -> str:
        """`vlm.openai.base_url`."""
        return ".".join((self.section, *self.path))

    @property
    def dest(self) -> str:
        """The argparse destination: `vlm__openai__base_url`."""
        return "__".join((self.section, *self.path))

    @property
    def extra(self) -> dict[str, Any]:
        return dict(self.info.json_schema_extra or {})  # type: ignore[arg-type]

    @property
    def env(self) -> str:
        return self.extra.get("env") or "RAR_" + "_".join((self.section, *self.path)).upper()

    @property
    def flag(self) -> str:
        return self.extra.get("flag") or "--" + "-".join((self.section, *self.path)).replace(
            "_", "-"
        )

    @property
    def help(self) -> str:
        return self.info.description or ""

    @property
    def choices(self) -> tuple[str, ...] | None:
        kind = _plain(self.annotation)
        if isinstance(kind, type) and issubclass(kind, enum.Enum):
            return tuple(str(m.value) for m in kind)
        return None

    def default_text(self) -> str:
        """The default as the docs show it."""
        if "shown" in self.extra:
            return self.extra["shown"]
        value = self.info.get_default(call_default_factory=True)
        if isinstance(value, enum.Enum):
            value = value.value
        if isinstance(value, bool):
            return "on" if value else "off"
        if value in ("", None, {}, []):
            return "none"
        return str(value)

    def check(self, raw: str, source: str) -> Any:
        """`parse`, then the field's own bounds and validators (what a flag is checked with).

        Raises:
            ValueError: naming `source` and what is wrong.
        """
        value = self.parse(raw, source)
        try:
            adapter = TypeAdapter(Annotated[self.annotation, self.info])  # type: ignore[valid-type]
            return adapter.validate_python(value)
        except ValidationError as exc:
            reason = exc.errors()[0]["msg"]
            raise ValueError(f"{source}: {raw!r} is not a valid {self.key}: {reason}") from None

    def parse(self, raw: str, source: str) -> Any:
        """A string from the environment or the command line, as the field's type.

        Raises:
            ValueError: naming `source` (the flag or variable) and what is wrong.
        """
        kind = _plain(self.annotation)
        try:
            if kind is bool:
                lowered = raw.strip().lower()
                if lowered not in ("1", "0", "true", "false", "on", "off", "yes", "no"):
                    raise ValueError("expected on or off")
                return lowered in ("1", "true", "on", "yes")
            if kind in (dict, list) or get_origin(kind) in (dict, list):
                return json.loads(raw) if raw.strip().startswith(("{", "[")) else _listed(raw)
            if isinstance(kind, type) and issubclass(kind, enum.Enum):
                return kind(raw)
            value = kind(raw) if kind in (int, float, str, Path) else raw
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError("not a finite number")
            return value
        except ValueError as exc:
            choices = f"; choose one of {', '.join(self.choices)}" if self.choices else ""
            raise ValueError(
                f"{source}: {raw!r} is not a valid {self.key}: {exc}{choices}"
            ) from None


def _plain(annotation: Any) -> Any:
    """`X` for `X | None`, else the annotation."""
    args = [a for a in get_args(annotation) if a is not type(None)]
    if (
        get_origin(annotation) is not None
        and len(args) == 1
        and get_origin(annotation)
        not in (
            dict,
            list,
        )
    ):
        return args[0]
    return annotation


def _listed(raw: str) -> list[str]:
    """A comma-separated list (`a.example, b.example`)."""
    return [part.strip() for part in raw.split(",") if part.strip()]


def knobs(section: str, model: type[BaseModel], path: tuple[str, ...] = ()) -> Iterator[Knob]:
    """Every field of a section, nested sections' fields included (depth first)."""
    for name, info in model.model_fields.items():
        kind = _plain(info.annotation)
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            yield from knobs(section, kind, (*path, name))
        else:
            yield Knob(section, (*path, name), info, info.annotation)


def nest(values: Mapping[tuple[str, ...], Any]) -> dict[str, Any]:
    """{("openai", "base_url"): v} -> {"openai": {"base_url": v}} (what a section takes)."""
    out: dict[str, Any] = {}
    for path, value in values.items():
        into = out
        for part in path[:-1]:
            into = into.setdefault(part, {})
        into[path[-1]] = value
    return out


def configuration_markdown(
    sections: Mapping[str, type[BaseModel]], intro: str = "", env_only: tuple[str, ...] = ()
) -> str:
    """The settings reference: a table per section (what `docs/configuration.md` holds).

    Sections in `env_only` are set by environment variable alone (no `rar` flag).
    """
    lines = [intro.rstrip(), ""] if intro else []
    for name, model in sections.items():
        lines += [f"## `{name}`", "", (model.__doc__ or "").strip().splitlines()[0], ""]
        lines += ["| setting | meaning | environment | flag | default |", "|---|---|---|---|---|"]
        for knob in knobs(name, model):
            meaning = " ".join(knob.help.split()).replace("|", "\\|")
            if knob.choices:
                meaning += f" (`{'`, `'.join(knob.choices)}`)"
            flag = "" if name in env_only else f"`{knob.flag}`"
            lines.append(
                f"| `{knob.key}` | {meaning} | `{knob.env}` | {flag} | `{knob.default_text()}` |"
            )
        lines.append("")
    return "\n".join(lines)
