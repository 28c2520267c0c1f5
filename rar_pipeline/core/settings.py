"""Where things live by default: everything under the project folder, overridable by env.

| env var              | default                              |
|----------------------|--------------------------------------|
| RAR_PROJECT_DIR      | the current working directory        |
| RAR_DATA_ROOT        | <project>/data/demo                  |
| RAR_ARTIFACTS_DIR    | <project>/artifacts/<data root name> |
| MLFLOW_TRACKING_URI  | sqlite:///<project>/mlruns/mlflow.db |
| RAR_MLFLOW_ARTIFACTS | <project>/mlruns/artifacts           |
| RAR_LANCEDB_URI      | <artifacts dir>/lancedb              |
| DAGSTER_HOME         | <project>/dagster_home               |
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    """Resolved locations for one corpus."""

    project_dir: Path
    data_root: Path
    artifacts_dir: Path
    mlflow_tracking_uri: str
    mlflow_artifacts: Path
    lancedb_uri: str
    dagster_home: Path

    @property
    def demo_root(self) -> Path:
        return self.project_dir / "data" / "demo"


def load_settings(
    data_root: str | os.PathLike[str] | None = None,
    artifacts_dir: str | os.PathLike[str] | None = None,
    env: dict[str, str] | None = None,
) -> Settings:
    """Resolve settings from explicit arguments, then the environment, then defaults.

    Args:
        data_root: the M-BEIR data root (wins over RAR_DATA_ROOT).
        artifacts_dir: where pipeline outputs go (wins over RAR_ARTIFACTS_DIR).
        env: the environment to read (default: os.environ).
    """
    env = dict(os.environ if env is None else env)
    project = Path(env.get("RAR_PROJECT_DIR") or Path.cwd()).resolve()
    root = Path(data_root or env.get("RAR_DATA_ROOT") or project / "data" / "demo").resolve()
    if artifacts_dir is None and env.get("RAR_ARTIFACTS_DIR"):
        artifacts_dir = env["RAR_ARTIFACTS_DIR"]
    artifacts = Path(artifacts_dir or project / "artifacts" / root.name).resolve()
    return Settings(
        project_dir=project,
        data_root=root,
        artifacts_dir=artifacts,
        mlflow_tracking_uri=env.get("MLFLOW_TRACKING_URI")
        or f"sqlite:///{project / 'mlruns' / 'mlflow.db'}",
        mlflow_artifacts=Path(env.get("RAR_MLFLOW_ARTIFACTS") or project / "mlruns" / "artifacts"),
        lancedb_uri=env.get("RAR_LANCEDB_URI") or str(artifacts / "lancedb"),
        dagster_home=Path(env.get("DAGSTER_HOME") or project / "dagster_home"),
    )
