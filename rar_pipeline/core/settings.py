"""Every setting a person can give, with one precedence: flag, then environment, then default.

`SETTINGS` is the table: each row names the setting, its environment variable, its `rar`
flag (if any), its default and what it means. `load_settings` resolves it, the CLI builds
its flags from it, and the README's configuration table lists exactly these rows. Every
`RAR_*` variable is read here and nowhere else.

Defaults that are locations live under the project folder (`core.layout.ProjectLayout`);
VLM backend defaults come from `core.enhance.vlm.config.DEFAULTS`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from rar_pipeline.core.corpus.images import ImageCheckLevel
from rar_pipeline.core.enhance.guard import GuardPolicy
from rar_pipeline.core.enhance.vlm.config import BACKENDS, DEFAULTS, VLMConfig
from rar_pipeline.core.layout import ArtifactLayout, ProjectLayout
from rar_pipeline.core.retrieval.options import ENCODERS, TRAINED, TrainOptions
from rar_pipeline.core.search.query import MAX_UPLOAD_BYTES, UPLOAD_QUOTA_BYTES


@dataclass(frozen=True)
class Setting:
    """One row of the settings table.

    Attributes:
        name: the `Settings` field.
        env: the environment variable that sets it.
        flag: the `rar` flag that sets it (None: environment only).
        default: a value, or a function of the settings resolved so far (rows above).
        help: what it means, for `--help` and the README.
        kind: how a string from the environment is parsed (str, float, Path).
        choices: the allowed values, when there is a fixed set.
        bounds: the smallest and largest value a number may take (inclusive).
        scope: which commands take the flag: "graph" (run, demo, search and serve: what
            the pipeline's resources are made of) or "serve" (the search page only).
    """

    name: str
    env: str
    flag: str | None
    default: Any
    help: str
    kind: Callable[[str], Any] = str
    choices: tuple[str, ...] | None = None
    bounds: tuple[float, float] | None = None
    scope: str = "graph"

    def parse(self, raw: Any, source: str) -> Any:
        """Turn a raw value into the setting's type, refusing values outside `choices`."""
        try:
            value = self.kind(raw) if isinstance(raw, str) else raw
        except ValueError as exc:
            raise ValueError(f"{source}: {raw!r} is not a valid {self.name}: {exc}") from None
        if self.choices is not None and str(value) not in self.choices:
            raise ValueError(
                f"{source}: {raw!r} is not a valid {self.name}; choose one of "
                + ", ".join(self.choices)
            )
        if self.bounds is not None:
            low, high = self.bounds
            if not (math.isfinite(value) and low <= value <= high):
                raise ValueError(f"{source}: {raw!r} is not a valid {self.name}: it must be "
                                 f"between {low:g} and {high:g}")  # fmt: skip
        return value


def _project(s: Mapping[str, Any]) -> ProjectLayout:
    return ProjectLayout(s["project_dir"])


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "project_dir", "RAR_PROJECT_DIR", None, lambda s: Path.cwd(),
        "the project folder; the location defaults below are relative to it",
        kind=Path,
    ),
    Setting(
        "data_root", "RAR_DATA_ROOT", "--data", lambda s: _project(s).demo_data,
        "the M-BEIR data root to read", kind=Path,
    ),
    Setting(
        "artifacts_dir", "RAR_ARTIFACTS_DIR", "--artifacts",
        lambda s: _project(s).artifacts_for(s["data_root"]),
        "where this corpus' outputs go (artifacts/<data root folder name>)", kind=Path,
    ),
    Setting(
        "image_check", "RAR_IMAGE_CHECK", "--image-check", ImageCheckLevel.DECODE.value,
        "how hard validation looks at images: decode (catches truncated files), header, "
        "exists (for very large pools), off",
        choices=tuple(level.value for level in ImageCheckLevel),
    ),
    Setting(
        "strict_paths", "RAR_STRICT_PATHS", "--strict-paths", "off",
        "on: resolve symlinks in paths from data files and page requests, refusing any "
        "whose real file is outside the data root (for roots others can write to)",
        choices=("off", "on"),
    ),
    Setting(
        "vlm_backend", "RAR_VLM_BACKEND", "--vlm-backend", DEFAULTS.backend,
        "which VLM enhances items: " + " | ".join(BACKENDS), choices=BACKENDS,
    ),
    Setting(
        "vlm_model", "RAR_VLM_MODEL", "--vlm-model", DEFAULTS.model_id,
        "model id; empty means the backend's default (Qwen/Qwen2.5-VL-7B-Instruct for the "
        "model backends)",
    ),
    Setting(
        "vlm_base_url", "RAR_VLM_BASE_URL", "--vlm-base-url", DEFAULTS.base_url,
        "openai backend: the server's /v1 URL; several, comma-separated, form a fleet",
    ),
    Setting(
        "vlm_api_key_env", "RAR_VLM_API_KEY_ENV", None, DEFAULTS.api_key_env,
        "openai backend: the environment variable that holds the API key (none sent if unset)",
    ),
    Setting(
        "vlm_timeout_s", "RAR_VLM_TIMEOUT_S", "--vlm-timeout", DEFAULTS.timeout_s,
        "openai backend: seconds to wait on a server per attempt", kind=float,
        bounds=(0.1, 86_400),
    ),
    Setting(
        "vlm_device", "RAR_VLM_DEVICE", "--vlm-device", DEFAULTS.device,
        "transformers backend: auto | cpu | cuda",
    ),
    Setting(
        "hallucination_policy", "RAR_HALLUCINATION_POLICY", "--hallucination-policy",
        GuardPolicy.KEEP.value,
        "what to do with entities that contradict an item's own text: keep | strip | drop",
        choices=tuple(p.value for p in GuardPolicy),
    ),
    Setting(
        "retriever_encoder", "RAR_ENCODER", "--encoder", "offline",
        "the retriever's backbone: " + " | ".join(ENCODERS), choices=tuple(ENCODERS),
    ),
    Setting(
        "retriever_model", "RAR_ENCODER_MODEL", "--encoder-model", "",
        "clip / vlm-embed: a Hugging Face model id or local folder (e.g. "
        "openai/clip-vit-base-patch32, Qwen/Qwen2-VL-2B-Instruct)",
    ),
    Setting(
        "retriever_trained", "RAR_TRAINED", "--trained", "heads",
        "what training updates: heads (projections only, the CPU default) | full | lora",
        choices=TRAINED,
    ),
    Setting(
        "retriever_device", "RAR_ENCODER_DEVICE", "--encoder-device", "cpu",
        "clip / vlm-embed: cpu | cuda",
    ),
    Setting(
        "train_epochs", "RAR_EPOCHS", "--epochs", TrainOptions.epochs,
        "training: at most this many epochs (early stopping on validation recall ends "
        "most runs sooner)", kind=int, bounds=(1, 100_000),
    ),
    Setting(
        "train_max_steps", "RAR_MAX_STEPS", "--max-steps", TrainOptions.max_steps,
        "training: at most this many optimiser steps (0: no limit)", kind=int,
        bounds=(0, 10**9),
    ),
    Setting(
        "train_batch_size", "RAR_BATCH_SIZE", "--batch-size", TrainOptions.batch_size,
        "training: queries per batch", kind=int, bounds=(1, 65_536),
    ),
    Setting(
        "train_lr", "RAR_LR", "--lr", TrainOptions.lr, "training: Adam's learning rate",
        kind=float, bounds=(1e-9, 10),
    ),
    Setting(
        "mined_negatives", "RAR_MINED_NEGATIVES", "--mined-negatives",
        TrainOptions.mined_negatives,
        "training: hard negatives per query mined with the retriever each epoch (0: none)",
        kind=int, bounds=(0, 1_000),
    ),
    Setting(
        "mlflow_tracking_uri", "MLFLOW_TRACKING_URI", None,
        lambda s: f"sqlite:///{_project(s).mlflow_db}",
        "MLflow's tracking store",
    ),
    Setting(
        "mlflow_artifacts", "RAR_MLFLOW_ARTIFACTS", None,
        lambda s: _project(s).mlflow_artifacts,
        "where MLflow keeps run artifacts", kind=Path,
    ),
    Setting(
        "lancedb_uri", "RAR_LANCEDB_URI", None,
        lambda s: str(ArtifactLayout(s["artifacts_dir"]).lancedb),
        "the LanceDB database (a folder, or an s3:// URI)",
    ),
    Setting(
        "dagster_home", "DAGSTER_HOME", None, lambda s: _project(s).dagster_home,
        "the Dagster instance that records runs (the Makefile sets it)", kind=Path,
    ),
    Setting(
        "search_max_upload_mb", "RAR_SEARCH_MAX_UPLOAD_MB", "--max-upload-mb",
        MAX_UPLOAD_BYTES // 2**20,
        "search page: the largest query image, in MiB (a bigger request is refused as it "
        "arrives)", kind=int, bounds=(1, 1024), scope="serve",
    ),
    Setting(
        "search_upload_quota_mb", "RAR_SEARCH_UPLOAD_QUOTA_MB", "--upload-quota-mb",
        UPLOAD_QUOTA_BYTES // 2**20,
        "search page: what the kept uploads may take, in MiB; the oldest go first",
        kind=int, bounds=(1, 10**7), scope="serve",
    ),
    Setting(
        "search_allowed_hosts", "RAR_SEARCH_ALLOWED_HOSTS", "--allowed-hosts", "",
        "search page: host names it answers to besides localhost and 127.0.0.1, "
        "comma-separated (for serving beyond this machine: --host 0.0.0.0 "
        "--allowed-hosts search.example.org)", scope="serve",
    ),
)  # fmt: skip
BY_NAME = {s.name: s for s in SETTINGS}


@dataclass(frozen=True)
class Settings:
    """Resolved settings (see `SETTINGS` for each field's meaning and source)."""

    project_dir: Path
    data_root: Path
    artifacts_dir: Path
    image_check: str
    strict_paths: str
    vlm_backend: str
    vlm_model: str
    vlm_base_url: str
    vlm_api_key_env: str
    vlm_timeout_s: float
    vlm_device: str
    hallucination_policy: str
    retriever_encoder: str
    retriever_model: str
    retriever_trained: str
    retriever_device: str
    train_epochs: int
    train_max_steps: int
    train_batch_size: int
    train_lr: float
    mined_negatives: int
    mlflow_tracking_uri: str
    mlflow_artifacts: Path
    lancedb_uri: str
    dagster_home: Path
    search_max_upload_mb: int
    search_upload_quota_mb: int
    search_allowed_hosts: str

    @property
    def project(self) -> ProjectLayout:
        return ProjectLayout(self.project_dir)

    def vlm_config(self) -> VLMConfig:
        """The VLM backend these settings choose (other knobs keep their defaults)."""
        return VLMConfig(
            backend=self.vlm_backend,
            model_id=self.vlm_model,
            base_url=self.vlm_base_url,
            api_key_env=self.vlm_api_key_env,
            timeout_s=self.vlm_timeout_s,
            device=self.vlm_device,
        )


def load_settings(env: Mapping[str, str] | None = None, **flags: Any) -> Settings:
    """Resolve every setting: a flag given here wins, then the environment, then the default.

    Args:
        env: the environment to read (default: `os.environ`).
        **flags: values given on the command line, by setting name; None means not given.

    Raises:
        ValueError: an unknown setting, or a value outside a setting's choices (the message
            names the flag or variable it came from).
    """
    env = os.environ if env is None else env
    unknown = sorted(set(flags) - BY_NAME.keys())
    if unknown:
        raise ValueError(f"unknown settings {unknown}")
    resolved: dict[str, Any] = {}
    for setting in SETTINGS:
        if flags.get(setting.name) is not None:
            source = setting.flag or setting.name
            resolved[setting.name] = setting.parse(flags[setting.name], source)
        elif env.get(setting.env):
            resolved[setting.name] = setting.parse(env[setting.env], setting.env)
        else:
            default = setting.default
            resolved[setting.name] = default(resolved) if callable(default) else default
    # Locations are absolute, whatever gave them.
    for name in ("project_dir", "data_root", "artifacts_dir", "mlflow_artifacts", "dagster_home"):
        resolved[name] = Path(resolved[name]).resolve()
    assert {f.name for f in fields(Settings)} == resolved.keys()
    return Settings(**resolved)
