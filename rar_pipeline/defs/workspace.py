"""Several corpora side by side in one Dagster UI: one code location per corpus.

A code location serves one corpus, the one its settings name. `rar ui --data A --data B`
writes a workspace with a location per corpus (named by its namespace, `defs.namespace`)
into the Dagster home and starts `dagster dev` on it. Each location is a two-line Python
file that builds the definitions for its data root (`definitions_for`), so each runs in
its own process with its own corpus, as Dagster's code locations are meant to; their asset
keys and partitions are in their corpus' namespace, so none collides with another's.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import yaml

from rar_pipeline.defs.namespace import namespace_of

LOCATION = '''"""The code location of the corpus at {root} (written by `rar ui`)."""

from rar_pipeline.definitions import definitions_for

defs = definitions_for({root!r})
'''


def write_workspace(folder: Path, data_roots: Sequence[Path], project: Path) -> Path:
    """Write a workspace with one code location per corpus into `folder`; its path.

    Raises:
        ValueError: two data roots with the same name (they would share a namespace).
    """
    roots = [Path(r).resolve() for r in data_roots]
    names = [namespace_of(r.name) for r in roots]  # a corpus is named by its folder
    if len(set(names)) < len(names):
        clash = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(
            f"data roots {[str(r) for r in roots]} share the namespace {clash}: a corpus is "
            "named by its folder; rename one folder"
        )
    (folder / "locations").mkdir(parents=True, exist_ok=True)
    entries = []
    for name, root in zip(names, roots, strict=True):
        module = folder / "locations" / f"{name}.py"
        module.write_text(LOCATION.format(root=str(root)))
        entries.append(
            {
                "python_file": {
                    "relative_path": str(module),
                    "location_name": name,
                    "working_directory": str(project),
                }
            }
        )
    workspace = folder / "workspace.yaml"
    workspace.write_text(yaml.safe_dump({"load_from": entries}, sort_keys=False))
    return workspace


def exec_dagster_dev(workspace: Path, dagster_home: Path, port: int) -> NoReturn:
    """Replace this process with `dagster dev` on 127.0.0.1 serving `workspace`."""
    dagster_home.mkdir(parents=True, exist_ok=True)
    dagster = shutil.which("dagster") or str(Path(sys.executable).with_name("dagster"))
    command = [dagster, "dev", "-h", "127.0.0.1", "-p", str(port), "-w", str(workspace)]
    os.execve(dagster, command, {**os.environ, "DAGSTER_HOME": str(dagster_home)})
