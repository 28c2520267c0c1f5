"""`VLMResource`: the VLM that enhances items, and the run options around it.

Its fields are `core.enhance.vlm.config.VLMConfig`'s (the backend, its model, a section
per backend) and, under `enhance`, `core.enhance.engine.EnhanceOptions`: declared there,
inherited here (a Dagster `Config` subclass of each section), so the launchpad shows every
knob with its description and no default is written twice.
"""

from __future__ import annotations

import dagster as dg

from rar_pipeline.core.enhance.engine import EnhanceOptions
from rar_pipeline.core.enhance.outputs import code_versions
from rar_pipeline.core.enhance.vlm.base import VLM
from rar_pipeline.core.enhance.vlm.config import (
    OpenAIConfig,
    TransformersConfig,
    VLLMConfig,
    VLMConfig,
)
from rar_pipeline.core.enhance.vlm.factory import create_vlm
from rar_pipeline.core.layout import ArtifactLayout


class OpenAISection(dg.Config, OpenAIConfig):
    """openai backend (see `OpenAIConfig`)."""


class TransformersSection(dg.Config, TransformersConfig):
    """transformers backend (see `TransformersConfig`)."""


class VLLMSection(dg.Config, VLLMConfig):
    """vllm backend (see `VLLMConfig`)."""


class EnhanceSection(dg.Config, EnhanceOptions):
    """How a run enhances items (see `EnhanceOptions`)."""


class VLMResource(dg.ConfigurableResource, VLMConfig):
    """The VLM that enhances items (`VLMConfig`), and how a run uses it (`enhance`)."""

    openai: OpenAISection = OpenAISection()
    transformers: TransformersSection = TransformersSection()
    vllm: VLLMSection = VLLMSection()
    enhance: EnhanceSection = EnhanceSection()

    @classmethod
    def of(cls, vlm: VLMConfig, enhance: EnhanceOptions) -> VLMResource:
        """The resource for a VLM and run options (`resources_from_settings`)."""
        return cls(**vlm.model_dump(), enhance=enhance.model_dump())

    def vlm_config(self) -> VLMConfig:
        """The backend these fields describe."""
        return VLMConfig.model_validate(self.model_dump(exclude={"enhance"}))

    def options(self) -> EnhanceOptions:
        """How a run uses the backend."""
        return EnhanceOptions.model_validate(self.enhance.model_dump())

    def resolved_model_id(self) -> str:
        return self.vlm_config().resolved_model_id

    def code_versions(self) -> dict[str, str]:
        """Each enhancement asset's code version under this configuration."""
        return code_versions(self.backend, self.resolved_model_id(), self.options())

    def create(self, artifacts: ArtifactLayout) -> VLM:
        """Build the backend; the offline one reads its memory from the artifacts."""
        return create_vlm(
            self.vlm_config(),
            captioner_dir=artifacts.captioner,
            perception_cache_dir=artifacts.perception_cache,
            seed=self.enhance.seed,
        )
