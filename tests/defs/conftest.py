"""Fixtures shared by the orchestration tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """One sqlite store for the module: creating its schema takes seconds."""
    root = tmp_path_factory.mktemp("mlflow")
    return {
        "tracking_uri": f"sqlite:///{root}/mlflow.db",
        "artifact_location": str(root / "artifacts"),
    }
