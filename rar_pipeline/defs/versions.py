"""Code versions that describe the configuration a run really has, checked as assets run.

A versioned asset's code version is fixed when the definitions load, from the resources
they are built with (the settings: flags, then environment, then defaults). The launchpad
and a run config can still change a resource's fields for one run. A field that feeds a
code version (the VLM's backend and model, `temperature`, `seed`, `query_type_overrides`,
the guard policy, the retriever's backbone and training options) would then write outputs
that Dagster labels with a version that did not make them, and shows FRESH.

So every asset whose version comes from its resources calls `require_defined_version`
first: it recomputes the asset's version from the resources this run has, with the very
functions the definitions use (`definitions.build_assets`), and refuses to run when it
differs, naming the fields the run config set and where to change them instead. Fields
that feed no version (timeouts, concurrency, thresholds) may still be set per run.
"""

from __future__ import annotations

from typing import Any

import dagster as dg

from rar_pipeline.defs.namespace import bare_name

# where a person changes a field for good (see README "Configuration")
WHERE = (
    "set it in the settings instead (a `rar run` flag, or its RAR_* environment variable "
    "for `make ui`; docs/configuration.md) and reload the code location"
)


def run_versions(vlm: Any, retriever: Any) -> dict[str, str | None]:
    """Every asset's code version under these resources, by its name (`bare_name`).

    Built afresh each time (~35 ms): a prompt or rule edited in this process counts.
    """
    from rar_pipeline.definitions import build_assets  # the graph imports this module

    graph = build_assets(vlm, retriever)
    return {bare_name(k): v for a in graph for k, v in a.code_versions_by_key.items()}


def require_defined_version(
    context: dg.AssetExecutionContext, vlm: Any, retriever: Any | None = None
) -> None:
    """Refuse to run with resources that give this asset another code version.

    Args:
        context: the asset's execution context.
        vlm: the run's `VLMResource`.
        retriever: the run's `RetrieverResource` (None: the asset's version does not
            depend on it; the default one stands in).

    Raises:
        dagster.Failure: the run's resources give another code version than the loaded
            definitions: a versioned field was set in the launchpad or run config.
    """
    from rar_pipeline.defs.resources import RetrieverResource

    key = context.asset_key
    defined = context.assets_def.code_versions_by_key.get(key)
    actual = run_versions(vlm, retriever or RetrieverResource()).get(bare_name(key))
    if defined is None or actual == defined:
        return
    set_in_run = {
        name: sorted(_leaves(section.get("config", {})))
        for name, section in (context.run.run_config.get("resources") or {}).items()
        if name in ("vlm", "retriever") and isinstance(section, dict)
    }
    fields = "; ".join(f"{k}: {', '.join(v)}" for k, v in set_in_run.items() if v) or "none"
    raise dg.Failure(
        description=(
            f"{key.to_user_string()}: this run's resources give code version {actual}, but "
            f"the loaded definitions say {defined}. A field that feeds the code version "
            f"was changed for this run (fields the run config sets: {fields}); outputs "
            f"written now would be labelled with a version that did not make them. Remove "
            f"it from the run config, or {WHERE}."
        ),
        allow_retries=False,
    )


def _leaves(config: dict, prefix: str = "") -> list[str]:
    """The dotted paths a nested run config sets (`enhance.temperature`)."""
    out = []
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out += _leaves(value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}")
    return out
