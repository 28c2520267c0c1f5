"""Every path the project writes, in one place.

- `ProjectLayout`: the defaults under the project folder (the demo corpus, per-corpus
  artifacts, MLflow, the Dagster instance).
- `ArtifactLayout`: one corpus' outputs, by stage. An asset asks it where to read and
  write; no other module joins output path strings.
- `demo_truth_file`: where the demo builder writes ground truth (outside the data root).

Where a data root's own files live (query/, cand_pool/, qrels/) is the M-BEIR data
contract, owned by `core.corpus.mbeir`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rar_pipeline.core.enhance.stores import CacheRoot


@dataclass(frozen=True)
class ProjectLayout:
    """Default locations under the project folder."""

    root: Path

    @property
    def demo_data(self) -> Path:
        return self.root / "data" / "demo"

    def artifacts_for(self, data_root: Path) -> Path:
        """A corpus' artifacts folder: artifacts/<data root folder name>."""
        return self.root / "artifacts" / Path(data_root).name

    @property
    def mlflow_db(self) -> Path:
        return self.root / "mlruns" / "mlflow.db"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.root / "mlruns" / "artifacts"

    @property
    def dagster_home(self) -> Path:
        return self.root / "dagster_home"


def demo_truth_file(data_root: Path) -> Path:
    """The demo's ground truth for a data root: <root>_truth/products.jsonl, beside it."""
    data_root = Path(data_root)
    return data_root.parent / f"{data_root.name}_truth" / "products.jsonl"


@dataclass(frozen=True)
class ArtifactLayout:
    """Where one corpus' pipeline outputs live, by stage.

    Partitioned outputs are one file per partition key (a pool shard or a query task, or an
    ablation config for the training, index and evaluation stages). The caches are SQLite
    files under `cache_dir` unless `cache_url` names a PostgreSQL database.
    """

    root: Path
    cache_url: str = ""

    # -- corpus: validated inputs and what was quarantined
    def pool(self, shard: str) -> Path:
        return self.root / "candidate_pool" / f"{shard}.parquet"

    def queries(self, task: str) -> Path:
        return self.root / "queries" / f"{task}.parquet"

    def qrels(self, task: str) -> Path:
        return self.root / "qrels" / f"{task}.parquet"

    def quarantine(self, step: str, key: str) -> Path:
        return self.root / "quarantine" / step / f"{key}.jsonl"

    def dropped_refs(self, task: str) -> Path:
        """References a task's kept queries lost (one JSON object per reference)."""
        return self.root / "quarantine" / "queries" / f"{task}.dropped_refs.jsonl"

    @property
    def quarantine_dir(self) -> Path:
        return self.root / "quarantine"

    # -- enhancement
    def captions(self, shard: str) -> Path:
        return self.root / "corpus_captions" / f"{shard}.parquet"

    def enhanced_corpus(self, shard: str) -> Path:
        return self.root / "enhanced_corpus" / f"{shard}.parquet"

    def enhanced_queries(self, task: str) -> Path:
        return self.root / "enhanced_queries" / f"{task}.parquet"

    @property
    def captioner(self) -> Path:
        """The offline backend's caption memory (a folder)."""
        return self.root / "offline_captioner"

    @property
    def cache_dir(self) -> Path:
        """The SQLite cache stores' folder, when no `cache_url` is set."""
        return self.root / "cache"

    @property
    def caches(self) -> CacheRoot:
        """Where every cache store lives: `cache_url`, or `cache_dir` (`rar compact-cache`)."""
        return CacheRoot(self.cache_url or str(self.cache_dir))

    @property
    def perception_cache(self) -> CacheRoot:
        """The offline backend's image feature and OCR caches (the encoder's text too)."""
        return self.caches / "perception"

    # -- retrieval, index and evaluation (per ablation config)
    def training_pairs(self, config: str) -> Path:
        return self.root / "training_pairs" / f"{config}.parquet"

    def training_candidates(self, config: str) -> Path:
        """Every pool's candidates in the config's representation (beside its pairs)."""
        return self.root / "training_pairs" / f"{config}.candidates.parquet"

    def training_pairs_left_out(self, config: str) -> Path:
        """The pairs and hard negatives left out as test labels, with why (JSON lines)."""
        return self.root / "training_pairs" / f"{config}.left_out.jsonl"

    def checkpoint(self, config: str) -> Path:
        """A fine-tuned retriever (a folder of safetensors and its config)."""
        return self.root / "checkpoints" / config

    def training_state(self, config: str) -> Path:
        """The trainer's resumable state while a config trains (gone once it finishes)."""
        return self.root / "checkpoints" / ".training" / config

    @property
    def tracking_journal(self) -> Path:
        """Runs tracked while MLflow could not be reached, until `rar sync-tracking`."""
        return self.root / "tracking_journal"

    @property
    def lancedb(self) -> Path:
        return self.root / "lancedb"

    @property
    def evaluation_dir(self) -> Path:
        return self.root / "evaluation"

    def run_file(self, config: str, task: str, setting: str = "local") -> Path:
        """A TREC run file (`qid Q0 did rank score run_id`) of one config on one task."""
        return self.evaluation_dir / "runs" / setting / config / f"{task}.trec"

    def trec_qrels(self, task: str) -> Path:
        """A task's test qrels in trec_eval's four columns."""
        return self.evaluation_dir / "qrels" / f"{task}.qrels"

    @property
    def evaluation_report(self) -> Path:
        """The latest evaluation's rows and what it ran on (JSON; `rar report` reads it)."""
        return self.evaluation_dir / "report.json"

    @property
    def evaluation_chart(self) -> Path:
        return self.evaluation_dir / "ablation.png"

    @property
    def evaluation_per_query(self) -> Path:
        """Every query's figures under every config (Parquet): what significance tests use."""
        return self.evaluation_dir / "per_query.parquet"

    # -- search
    @property
    def search_uploads(self) -> Path:
        """Query images uploaded to the search page, by content hash (served back only here)."""
        return self.root / "search" / "uploads"
