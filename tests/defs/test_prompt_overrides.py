"""A prompts file, named in the settings, edits the graph's prompts as a source edit would.

Through the real definitions on the mini corpus: the captions built with the shipped
prompts turn outdated (and only the caption lineage), the `current_version` check names
the prompt with the file and line it came from, the enhancement cache re-asks exactly the
items the edited prompt serves, and a launchpad run config that names another prompts
file is refused like any other versioned field.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from rar_pipeline.core.enhance.prompts import PROMPTS
from rar_pipeline.core.settings import load_settings
from rar_pipeline.definitions import build_assets
from rar_pipeline.defs.drift import current_version_checks
from rar_pipeline.defs.launch import run_pipeline
from rar_pipeline.defs.resources import CorpusResource
from tests.fake_vlm import FakeVLMResource
from tests.graph_resources import graph_resources

SHARD = "mbeir_mini_task0_cand_pool"
TASK = "mbeir_mini_task6"
CAPTION = PROMPTS["corpus_caption"]


def _overrides(folder: Path) -> Path:
    path = folder / "prompts.toml"
    path.write_text(f"[corpus_caption]\nsystem = {CAPTION.system + ' Name the materials.'!r}\n")
    return path


def _vlm(prompts: Path | None = None) -> FakeVLMResource:
    return FakeVLMResource(enhance={"prompts": str(prompts or "")})


@pytest.fixture
def built(mini_corpus: Path, tmp_path: Path):
    """The mini corpus ingested and its shard captioned, its task rewritten, shipped prompts."""
    corpus = CorpusResource(data_root=str(mini_corpus), artifacts_dir=str(tmp_path / "out"))
    settings = load_settings(data_root=corpus.data_root, artifacts_dir=corpus.artifacts_dir)
    instance, vlm = dg.DagsterInstance.ephemeral(), _vlm()
    wanted = {"candidate_pool", "queries"}
    ingest = [a for a in build_assets(vlm) if {k.path[-1] for k in a.keys} & wanted]
    run_pipeline(settings, resources=graph_resources(corpus, vlm), assets=ingest,
                 instance=instance)  # fmt: skip
    for asset, partition in (("corpus_captions", SHARD), ("enhanced_queries", TASK)):
        _materialize(corpus, vlm, instance, asset, partition)
    return corpus, instance


def _materialize(corpus, vlm, instance, asset, partition, run_config=None):
    return dg.materialize(
        build_assets(vlm), selection=[asset], partition_key=partition, instance=instance,
        resources=graph_resources(corpus, vlm), run_config=run_config, raise_on_error=False,
    )  # fmt: skip


def test_the_file_outdates_the_caption_lineage_only(tmp_path):
    shipped = {a.key.path[-1]: a for a in build_assets(_vlm())}
    edited = {a.key.path[-1]: a for a in build_assets(_vlm(_overrides(tmp_path)))}
    changed = {
        name
        for name, asset in edited.items()
        if asset.code_versions_by_key != shipped[name].code_versions_by_key
    }
    # the captions, the merge, and what embeds or trains on the enhanced corpus
    assert {"corpus_captions", "enhanced_corpus"} <= changed
    assert not changed & {"enhanced_queries", "offline_captioner", "candidate_pool", "queries"}
    assert "training_pairs_none" not in changed and "training_pairs_query" not in changed


def test_the_check_names_the_prompt_and_where_the_file_set_it(built, tmp_path):
    corpus, instance = built
    path = _overrides(tmp_path)
    captions = next(a for a in build_assets(_vlm(path)) if a.key.path[-1] == "corpus_captions")
    [check] = current_version_checks([captions], _vlm(path).enhance.prompt_set())
    result = dg.materialize(
        [check], instance=instance, selection=dg.AssetSelection.all_asset_checks()
    )
    [evaluation] = result.get_asset_check_evaluations()
    assert not evaluation.passed
    changed = evaluation.metadata["changed_prompts"].value
    assert changed.startswith(f"corpus_caption ({path}:1): {CAPTION.version} -> ")


def test_the_cache_re_asks_only_the_items_the_edited_prompt_serves(built, tmp_path):
    corpus, instance = built
    vlm = _vlm(_overrides(tmp_path))
    captions = _materialize(corpus, vlm, instance, "corpus_captions", SHARD)
    queries = _materialize(corpus, vlm, instance, "enhanced_queries", TASK)
    assert captions.success and queries.success
    asked = captions.asset_materializations_for_node("corpus_captions")[0].metadata
    assert asked["backend_calls"].value > 0 and asked["cache_hits"].value == 0
    kept = queries.asset_materializations_for_node("enhanced_queries")[0].metadata
    # the query prompts did not change: every rewrite comes from the cache
    assert kept["backend_calls"].value == 0 and kept["cache_hits"].value > 0


def test_a_run_config_naming_another_prompts_file_is_refused(built, tmp_path):
    corpus, instance = built
    other = {"resources": {"vlm": {"config": {"enhance": {"prompts": str(_overrides(tmp_path))}}}}}
    refused = _materialize(corpus, _vlm(), instance, "corpus_captions", SHARD, other)
    assert not refused.success
    (failure,) = [e for e in refused.all_events if e.event_type_value == "STEP_FAILURE"]
    assert (
        "fields the run config sets: vlm: enhance.prompts"
        in failure.step_failure_data.error.message
    )
