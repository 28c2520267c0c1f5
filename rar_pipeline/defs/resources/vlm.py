"""`VLMResource`: the VLM that enhances items and the policy around it; `FakeVLMResource`.

Its fields are `VLMConfig`'s backend knobs and `EnhanceOptions`' run options, with the
defaults those dataclasses define (a test keeps the three in step).
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import dagster as dg
from pydantic import PrivateAttr

from rar_pipeline.core.enhance.engine import DEFAULT_OPTIONS, EnhanceOptions
from rar_pipeline.core.enhance.guard import GuardPolicy
from rar_pipeline.core.enhance.outputs import code_versions
from rar_pipeline.core.enhance.vlm.base import VLM
from rar_pipeline.core.enhance.vlm.config import DEFAULTS, VLMConfig
from rar_pipeline.core.enhance.vlm.factory import create_vlm
from rar_pipeline.core.enhance.vlm.fake import FakeVLM
from rar_pipeline.core.layout import ArtifactLayout
from rar_pipeline.core.settings import Settings


class VLMResource(dg.ConfigurableResource):
    """The VLM that enhances items, and the enhancement policy around it.

    Backend knobs (see `core.enhance.vlm.config.VLMConfig` for each): backend, model_id,
    trust_remote_code; openai: base_url, api_key_env, max_concurrency, timeout_s,
    max_retries, backoff_s; transformers: device, dtype, device_batch_size,
    local_files_only, revision; vllm: max_model_len, gpu_memory_utilization,
    tensor_parallel_size, max_num_seqs, engine_batch_size.

    Run options (see `core.enhance.engine.EnhanceOptions`): temperature, seed, batch_size,
    max_attempts, hallucination_policy, query_type_overrides; and max_failure_rate, above
    which the failure-rate asset checks warn, and min_caption_coverage, below which a
    shard's captions block its downstream (a VLM outage must not flow into training).
    """

    backend: str = DEFAULTS.backend
    model_id: str = DEFAULTS.model_id
    trust_remote_code: bool = DEFAULTS.trust_remote_code
    base_url: str = DEFAULTS.base_url
    api_key_env: str = DEFAULTS.api_key_env
    max_concurrency: int = DEFAULTS.max_concurrency
    timeout_s: float = DEFAULTS.timeout_s
    max_retries: int = DEFAULTS.max_retries
    backoff_s: float = DEFAULTS.backoff_s
    device: str = DEFAULTS.device
    dtype: str = DEFAULTS.dtype
    device_batch_size: int = DEFAULTS.device_batch_size
    local_files_only: bool = DEFAULTS.local_files_only
    revision: str = DEFAULTS.revision
    max_model_len: int = DEFAULTS.max_model_len
    gpu_memory_utilization: float = DEFAULTS.gpu_memory_utilization
    tensor_parallel_size: int = DEFAULTS.tensor_parallel_size
    max_num_seqs: int = DEFAULTS.max_num_seqs
    engine_batch_size: int = DEFAULTS.engine_batch_size

    temperature: float = DEFAULT_OPTIONS.temperature
    seed: int = DEFAULT_OPTIONS.seed
    batch_size: int = DEFAULT_OPTIONS.batch_size
    max_attempts: int = DEFAULT_OPTIONS.max_attempts
    hallucination_policy: str = DEFAULT_OPTIONS.guard.value
    query_type_overrides: dict[str, str] = {}
    max_failure_rate: float = 0.02
    min_caption_coverage: float = 0.5

    @classmethod
    def from_settings(cls, settings: Settings) -> VLMResource:
        """The resource for resolved settings (flags > environment > defaults)."""
        config = settings.vlm_config()
        return cls(
            **{f.name: getattr(config, f.name) for f in fields(VLMConfig)},
            hallucination_policy=settings.hallucination_policy,
        )

    def vlm_config(self) -> VLMConfig:
        """The backend these fields describe."""
        return VLMConfig(**{f.name: getattr(self, f.name) for f in fields(VLMConfig)})

    def options(self) -> EnhanceOptions:
        """How a run uses the backend."""
        return EnhanceOptions(
            temperature=self.temperature,
            seed=self.seed,
            batch_size=self.batch_size,
            max_attempts=self.max_attempts,
            guard=GuardPolicy(self.hallucination_policy),
            query_type_overrides=dict(self.query_type_overrides),
        )

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
            seed=self.seed,
        )


class FakeVLMResource(VLMResource):
    """`VLMResource` whose backend is a `FakeVLM` shared across calls (tests count calls)."""

    backend: str = "fake"
    model_id: str = "fake-vlm"
    fail_first: dict[str, int] = {}
    _vlm: Any = PrivateAttr(default=None)

    def resolved_model_id(self) -> str:
        return self.model_id

    @property
    def fake(self) -> FakeVLM:
        if self._vlm is None:
            self._vlm = FakeVLM(model_id=self.model_id, fail_first=dict(self.fail_first))
        return self._vlm

    def create(self, artifacts: ArtifactLayout) -> VLM:
        return self.fake
