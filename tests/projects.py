"""Project folders for tests that run `rar`: where its settings point, a tiny demo run."""

from __future__ import annotations

from pathlib import Path

import pytest

# `rar demo` at a tiny size: every stage, the offline VLM, three epochs
TINY_DEMO = ["demo", "--epochs", "3", "--train-products", "20", "--test-products", "12",
             "--train-queries", "6", "--test-queries", "4"]  # fmt: skip
PROJECT_VARS = ("RAR_DATA_ROOT", "RAR_ARTIFACTS_DIR", "MLFLOW_TRACKING_URI", "RAR_LANCEDB_URI")


def point_at_project(patch: pytest.MonkeyPatch, root: Path) -> None:
    """Make `rar` (and its settings) use the project folder `root`."""
    patch.setenv("RAR_PROJECT_DIR", str(root))
    patch.setenv("DAGSTER_HOME", str(root / "dagster_home"))
    for var in PROJECT_VARS:
        patch.delenv(var, raising=False)
