"""Every setting a person can give, with one precedence: flag, then environment, then default.

The settings are the components' typed sections (`SECTIONS`), each declared once where its
component lives: the corpus (`core.corpus.config`), the VLM with a section per backend
(`core.enhance.vlm.config`), the enhancement run (`core.enhance.engine.EnhanceOptions`),
the retriever and its training (`core.retrieval.options`), storage, the Celery cluster,
index maintenance (`core.index.maintenance`), the search page. Every field is a
`core.config.Knob`: its environment variable and `rar` flag come from its name (or its own
shorter ones), and `load_settings` reads them, in this module and nowhere else,
then derives the defaults that depend on other settings (the demo data under the project,
the artifacts under the data root's name, the LanceDB folder under the artifacts...).

docs/configuration.md is generated from the same fields (`python -m rar_pipeline.core.settings
> docs/configuration.md`, `make docs`); a test fails when it is out of date.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pydantic import BaseModel, ValidationError

from rar_pipeline.core.cluster import ClusterConfig
from rar_pipeline.core.config import Knob, Section, configuration_markdown, knobs, nest, setting
from rar_pipeline.core.corpus.config import CorpusConfig
from rar_pipeline.core.enhance.engine import EnhanceOptions
from rar_pipeline.core.enhance.vlm.config import VLMConfig
from rar_pipeline.core.index.maintenance import MaintenancePolicy
from rar_pipeline.core.layout import ProjectLayout
from rar_pipeline.core.object_store import is_object_store
from rar_pipeline.core.retrieval.options import RetrieverConfig, TrainOptions
from rar_pipeline.core.search.query import SearchPageConfig


class StorageConfig(Section):
    """Where things are kept: the project folder, Dagster's instance, MLflow and LanceDB.

    The location defaults are relative to the project folder.
    """

    project_dir: str = setting(
        "", "the project folder; the location defaults are relative to it",
        env="RAR_PROJECT_DIR", shown="the working directory",
    )  # fmt: skip
    dagster_home: str = setting(
        "", "the Dagster instance that records runs (the Makefile sets it)",
        env="DAGSTER_HOME", shown="<project>/dagster_home",
    )  # fmt: skip
    mlflow_tracking_uri: str = setting(
        "", "MLflow's tracking store (a sqlite:/// file, or a server's http(s) URL)",
        env="MLFLOW_TRACKING_URI", shown="sqlite:///<project>/mlruns/mlflow.db",
    )  # fmt: skip
    mlflow_artifacts: str = setting(
        "", "where MLflow keeps run artifacts (a folder or an s3:// URI); with a tracking "
        "server, leave it empty: the server keeps them and the runs need no bucket access",
        env="RAR_MLFLOW_ARTIFACTS",
        shown="<project>/mlruns/artifacts for a local store; the server's for a server",
    )  # fmt: skip
    lancedb_uri: str = setting(
        "", "the LanceDB database (a folder, or an s3:// URI)", env="RAR_LANCEDB_URI",
        shown="<artifacts dir>/lancedb",
    )  # fmt: skip
    lancedb_single_writer: bool = setting(
        False, "allow LanceDB on an object store that ignores conditional writes, where "
        "only one index run may write at a time (else such a store is refused)",
        env="RAR_LANCEDB_SINGLE_WRITER",
    )  # fmt: skip
    s3_endpoint_url: str = setting(
        "", "an S3-compatible server's URL for s3:// locations (SeaweedFS, MinIO, Ceph); "
        "credentials come from the standard AWS variables or files", env="AWS_ENDPOINT_URL",
        shown="AWS",
    )  # fmt: skip
    s3_region: str = setting("", "the region of s3:// locations", env="AWS_REGION",
                             shown="the AWS chain's")  # fmt: skip

    def layout(self) -> ProjectLayout:
        return ProjectLayout(Path(self.project_dir))


SECTIONS: dict[str, type[BaseModel]] = {
    "corpus": CorpusConfig,
    "vlm": VLMConfig,
    "enhance": EnhanceOptions,
    "retriever": RetrieverConfig,
    "training": TrainOptions,
    "storage": StorageConfig,
    "cluster": ClusterConfig,
    "index": MaintenancePolicy,
    "search": SearchPageConfig,
}
KNOBS: tuple[Knob, ...] = tuple(k for name, model in SECTIONS.items() for k in knobs(name, model))
BY_DEST = {k.dest: k for k in KNOBS}
ENV_ONLY = ("storage", "cluster", "index")  # set by environment variable alone: no `rar` flag
# a field name that is one knob's only (`epochs`, `data_root`) may name it alone
_FIELDS = Counter(k.path[-1] for k in KNOBS)
_BY_FIELD = {k.path[-1]: k for k in KNOBS if _FIELDS[k.path[-1]] == 1}


class Settings(Section):
    """Resolved settings: one section per component (see `SECTIONS`)."""

    corpus: CorpusConfig
    vlm: VLMConfig
    enhance: EnhanceOptions
    retriever: RetrieverConfig
    training: TrainOptions
    storage: StorageConfig
    cluster: ClusterConfig
    index: MaintenancePolicy
    search: SearchPageConfig

    @property
    def data_root(self) -> Path:
        return self.corpus.root

    @property
    def artifacts_dir(self) -> Path:
        """The artifacts' folder (this process' local copy of them, if in object storage)."""
        return self.corpus.artifacts().root

    @property
    def dagster_home(self) -> Path:
        return Path(self.storage.dagster_home)


def knob(name: str) -> Knob:
    """A knob by its argparse destination (`training__epochs`) or its unique field name."""
    found = BY_DEST.get(name) or _BY_FIELD.get(name)
    if found is None:
        raise ValueError(f"unknown setting {name!r}")
    return found


def load_settings(env: Mapping[str, str] | None = None, **flags: Any) -> Settings:
    """Resolve every setting: a flag given here wins, then the environment, then the default.

    Args:
        env: the environment to read (default: `os.environ`).
        **flags: values given on the command line, by knob (`training__epochs`, or a
            field name only one knob has, like `epochs` or `data_root`); None: not given.

    Raises:
        ValueError: an unknown setting, or a value its field refuses (out of bounds, not
            one of its choices); the message names the flag or variable it came from.
    """
    env = os.environ if env is None else env
    given: dict[str, tuple[Any, str]] = {}  # dest -> (value, where it came from)
    for name, value in flags.items():
        if value is not None:
            k = knob(name)
            given[k.dest] = (str(value) if isinstance(value, Path) else value, k.flag)
    for k in KNOBS:
        if k.dest not in given and env.get(k.env):
            given[k.dest] = (k.parse(env[k.env], k.env), k.env)
    sections = {
        name: _section(name, model, given) for name, model in SECTIONS.items()
    }  # fmt: skip
    return Settings(**_derive(sections))


def _section(name: str, model: type[BaseModel], given: dict[str, tuple[Any, str]]) -> Any:
    mine = {k.path: given[k.dest] for k in KNOBS if k.section == name and k.dest in given}
    try:
        return model.model_validate(nest({path: value for path, (value, _) in mine.items()}))
    except ValidationError as exc:
        error = exc.errors()[0]
        path = tuple(str(p) for p in error["loc"])
        value, source = mine.get(path, (error.get("input"), f"{name}.{'.'.join(path)}"))
        raise ValueError(
            f"{source}: {value!r} is not a valid {name}.{'.'.join(path)}: {error['msg']}"
        ) from None


def _derive(sections: dict[str, Any]) -> dict[str, Any]:
    """Fill the location defaults that depend on other settings; make locations absolute."""
    storage = sections["storage"]
    root = Path(storage.project_dir or Path.cwd()).resolve()
    places = ProjectLayout(root)
    corpus = sections["corpus"]
    data = _location(corpus.data_root or str(places.demo_data))
    artifacts = _location(
        corpus.artifacts_dir or str(places.artifacts_for(Path(urlparse(data).path)))
    )
    home = Path(storage.dagster_home or places.dagster_home).resolve()
    tracking = storage.mlflow_tracking_uri or f"sqlite:///{places.mlflow_db}"
    stores = {
        "project_dir": str(root),
        "dagster_home": str(home),
        "mlflow_tracking_uri": tracking,
        "mlflow_artifacts": _mlflow_artifacts(storage.mlflow_artifacts, tracking, places),
        "lancedb_uri": storage.lancedb_uri or f"{artifacts}/lancedb",
    }
    enhance = sections["enhance"]
    prompts = str((root / enhance.prompts).resolve()) if enhance.prompts else ""
    return {
        **sections,
        "enhance": enhance.model_copy(update={"prompts": prompts}),
        "corpus": corpus.model_copy(
            update={"data_root": str(data), "artifacts_dir": str(artifacts)}
        ),
        "storage": storage.model_copy(update=stores),
    }


def _location(given: str) -> str:
    """A storage location made absolute: a URI as it is, a folder resolved."""
    return given if is_object_store(given) else str(Path(given).resolve())


def _mlflow_artifacts(given: str, tracking_uri: str, places: ProjectLayout) -> str:
    """Where MLflow run artifacts go: as given; else beside a local store, or the server's."""
    if given:
        return given if "://" in given else str(Path(given).resolve())
    if tracking_uri.lower().startswith(("http://", "https://")):
        return ""  # the tracking server's own (proxied) artifact store
    return str(places.mlflow_artifacts.resolve())


INTRO = """# Configuration

Who this is for: anyone changing how `rar` and the Dagster UI run. Every setting below is
a field of its component's typed section, declared once in the code; its environment
variable, its `rar` flag and this page are generated from it (`make docs` rewrites this
page; a test fails when it is out of date).

One precedence everywhere: **a flag, then the environment, then the default**. `rar run`,
`rar demo`, `rar search` and `rar serve` take the flags (`rar serve` also the `search`
section's); `make ui`, the schedules and sensors read the environment. A value a field
refuses (out of bounds, not one of its choices) stops the command before anything runs,
naming the flag or variable it came from. Lists take commas (`a.example,b.example`) or
JSON, mappings JSON (`{"mbeir_cirr_task7": "modification"}`), switches `on` or `off`.
`rar demo` writes to `data/demo` unless given `--data`: `RAR_DATA_ROOT` names the corpus
`rar run` and the UI read, which the demo must never overwrite.

In the Dagster launchpad, a resource's fields may be set for one run, except those a code
version is made of (the VLM's backend, model and sampling, the guard, the query-type
overrides, the retriever and its training): a run that changes one is refused, since its
outputs would carry a version that did not make them (`defs/versions.py`). Set those here
and reload the code location.
"""


def configuration_page() -> str:
    """What docs/configuration.md holds."""
    return configuration_markdown(SECTIONS, INTRO, ENV_ONLY)


if __name__ == "__main__":
    sys.stdout.write(configuration_page())
