"""Whether an ablation compares like with like: every config built from the same enhanced data.

After a prompt edit, the captions and the indexes can be rebuilt while a checkpoint is
still the one trained on the old captions' pairs (training is left to the user: it costs
GPU hours). An evaluation of that state would put configs side by side that saw different
enhanced data and report it as the method's result. `inconsistencies` names each config
whose index or checkpoint does not match the definitions now, with the asset to
materialize; the index's `current_checkpoint` check and `retrieval_eval` refuse on it.
"""

from __future__ import annotations

from dataclasses import dataclass

from rar_pipeline.core import names
from rar_pipeline.core.retrieval.checkpoint import is_untrained


@dataclass(frozen=True)
class ConfigInputs:
    """What one indexed config was built from, and what the definitions expect now.

    Attributes:
        index: the index asset's name.
        checkpoint: the checkpoint asset's name.
        reference: the checkpoint on disk now ("<config>@<hash>"; untrained: the base).
        checkpoint_built: the code version the checkpoint's latest materialization carries
            (None: never materialized).
        checkpoint_current: the checkpoint asset's code version in the definitions.
        embedded_by: the reference the index's rows were embedded with (None: no table).
        enhanced_built: the enhanced corpus version the rows were built from.
        enhanced_current: the enhanced corpus version now (None: the config reads none).
    """

    index: str
    checkpoint: str
    reference: str
    checkpoint_built: str | None
    checkpoint_current: str
    embedded_by: str | None = None
    enhanced_built: str | None = None
    enhanced_current: str | None = None


def checkpoint_outdated(inputs: ConfigInputs) -> str | None:
    """Why the config's checkpoint was trained on other pairs than the current ones, or None."""
    if is_untrained(inputs.reference) or inputs.checkpoint_built == inputs.checkpoint_current:
        return None
    return (
        f"{inputs.checkpoint} was trained on training pairs of other enhanced data or options "
        f"(code version {inputs.checkpoint_built or 'none'}, now {inputs.checkpoint_current}): "
        f"{names.materialize(inputs.checkpoint)} (`rar refresh --include-training`)"
    )


def inconsistencies(inputs: ConfigInputs) -> list[str]:
    """Each way the config's index and checkpoint differ from the definitions now."""
    problems = [why] if (why := checkpoint_outdated(inputs)) else []
    if inputs.embedded_by is not None and inputs.embedded_by != inputs.reference:
        problems.append(
            f"{inputs.index} was embedded by {inputs.embedded_by}, the checkpoint is now "
            f"{inputs.reference}: {names.materialize(inputs.index)}"
        )
    if inputs.enhanced_current is not None and inputs.enhanced_built != inputs.enhanced_current:
        problems.append(
            f"{inputs.index} holds the enhanced corpus of version {inputs.enhanced_built}, "
            f"now {inputs.enhanced_current}: {names.materialize(inputs.index)}"
        )
    return problems
