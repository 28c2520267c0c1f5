"""`rar refresh`: from a prompt edit to a consistent ablation, running only what it must.

On the hand-written corpus, after a full `rar run`: with nothing changed there is nothing
to refresh; a prompts file that edits the corpus caption prompt makes exactly the caption
lineage outdated; refreshing without training rebuilds it but keeps the evaluation from
comparing configs built from different enhanced data (the indexes' blocking
`current_checkpoint` checks); `--include-training` retrains and evaluates once, after
which everything is up to date again.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from rar_pipeline.cli import main
from rar_pipeline.core.enhance.prompts import PROMPTS
from rar_pipeline.core.settings import load_settings
from rar_pipeline.definitions import build_assets
from rar_pipeline.defs.namespace import namespace_of
from rar_pipeline.defs.resources import resources_from_settings
from tests.projects import point_at_project

pytestmark = pytest.mark.slow


@pytest.fixture
def ran(tmp_path: Path, mini_corpus: Path, monkeypatch: pytest.MonkeyPatch, capsys):
    """A project in which `rar run` went through the whole graph on the mini corpus."""
    point_at_project(monkeypatch, tmp_path)
    monkeypatch.setenv("RAR_EPOCHS", "2")
    assert main(["run", "--data", str(mini_corpus)]) == 0, capsys.readouterr().out
    capsys.readouterr()
    prompts = tmp_path / "prompts.toml"
    system = PROMPTS["corpus_caption"].system + " Name the materials."
    prompts.write_text(f"[corpus_caption]\nsystem = {system!r}\n")
    return tmp_path, mini_corpus, prompts


def _refresh(capsys, corpus: Path, *flags: str) -> tuple[int, str]:
    code = main(["refresh", "--data", str(corpus), *flags])
    return code, capsys.readouterr().out


def _evaluations(project: Path) -> int:
    instance = dg.DagsterInstance.from_config(str(project / "dagster_home"))
    key = dg.AssetKey(["mbeir_mini", "retrieval_eval"])  # in the corpus' namespace
    return len(instance.fetch_materializations(key, limit=100).records)


def test_nothing_changed_means_nothing_to_refresh(ran, capsys):
    _, corpus, _ = ran
    code, out = _refresh(capsys, corpus, "--plan")
    assert code == 0 and "everything is up to date: nothing to refresh" in out


def test_a_prompt_edit_plans_exactly_the_caption_lineage(ran, capsys):
    _, corpus, prompts = ran
    code, out = _refresh(capsys, corpus, "--prompts", str(prompts), "--plan")
    assert code == 0, out
    planned = {line.split()[0].split("[")[0] for line in out.splitlines() if line.startswith("  ")}
    assert {"corpus_captions", "enhanced_corpus", "training_pairs_corpus", "training_pairs_full",
            "lancedb_index_corpus", "lancedb_index_full", "lancedb_index_inference_only",
            "retrieval_eval"} <= planned  # fmt: skip
    untouched = {"candidate_pool", "queries", "offline_captioner", "enhanced_queries",
                 "training_pairs_none", "training_pairs_query", "lancedb_index_none",
                 "lancedb_index_query"}  # fmt: skip
    assert not planned & untouched
    assert "corpus_captions: built by an older code version" in out
    assert "training left out: retriever_checkpoint_corpus (built by an older code version)" in out
    assert "retriever_checkpoint_none" not in out


def test_refresh_without_training_keeps_the_evaluation_from_mixing_data(ran, capsys):
    project, corpus, prompts = ran
    before = _evaluations(project)
    code, out = _refresh(capsys, corpus, "--prompts", str(prompts))
    assert code == 1, out
    assert "retrieval_eval" in out and "blocked by lancedb_index_corpus's current_checkpoint" in out
    assert _evaluations(project) == before

    code, out = _refresh(capsys, corpus, "--prompts", str(prompts), "--include-training")
    assert code == 0, out
    assert "retriever_checkpoint_full" in out and "corpus_captions" not in out  # done already
    assert _evaluations(project) == before + 1
    code, out = _refresh(capsys, corpus, "--prompts", str(prompts), "--plan")
    assert "everything is up to date" in out, out


def test_an_evaluation_launched_alone_refuses_configs_of_different_enhanced_data(ran):
    project, corpus, prompts = ran
    settings = load_settings(data_root=str(corpus), prompts=str(prompts))
    resources = resources_from_settings(settings)
    instance = dg.DagsterInstance.from_config(str(project / "dagster_home"))
    namespace = namespace_of(settings.corpus.name)
    result = dg.materialize(
        build_assets(resources["vlm"], resources["retriever"], namespace),
        selection=[f"{namespace}/retrieval_eval"],
        resources=resources, instance=instance, raise_on_error=False,
    )  # fmt: skip
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    message = failure.step_failure_data.error.message
    assert "the configs were not all built from the current enhanced data" in message
    assert "retriever_checkpoint_full was trained on training pairs of other" in message
    assert "lancedb_index_full holds the enhanced corpus of version" in message
    assert "lancedb_index_none" not in message  # the none config reads no enhanced data
