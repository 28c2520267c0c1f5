"""Each name once (`core/names.py`): the graph's assets, groups and jobs are named from it,
and every "materialize X" a person is told names an asset that exists.

`defs/searchers.py` once told users to "rematerialize retriever_{name}", an asset that
never existed (it is `retriever_checkpoint_*`).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import dagster as dg
import pytest

from rar_pipeline.core import names
from rar_pipeline.core.index.configs import INDEXED
from rar_pipeline.core.retrieval.pairs import CONFIGS
from rar_pipeline.definitions import build_definitions
from tests.fake_vlm import FakeVLMResource

PACKAGE = Path(__file__).resolve().parents[1] / "rar_pipeline"
HINT = re.compile(r"materialize\s+[\w{]")  # "materialize X", "rematerialize {asset}"


@pytest.fixture(scope="module")
def defs() -> dg.Definitions:
    return build_definitions({"vlm": FakeVLMResource()})


def named_assets() -> set[str]:
    """Every asset `core/names.py` names."""
    single = {
        names.DEMO_CORPUS, names.DEMO_CAPTION_ACCURACY, names.CANDIDATE_POOL, names.QUERIES,
        names.OFFLINE_CAPTIONER, names.CORPUS_CAPTIONS, names.ENHANCED_CORPUS,
        names.ENHANCED_QUERIES, names.RETRIEVAL_EVAL,
    }  # fmt: skip
    per_config = {
        names.per_config(prefix, c)
        for prefix in (names.TRAINING_PAIRS, names.RETRIEVER_CHECKPOINT)
        for c in CONFIGS
    } | {names.per_config(names.LANCEDB_INDEX, c) for c in INDEXED}
    return single | per_config


def test_every_asset_of_the_graph_is_named_there_and_every_name_is_an_asset(defs):
    keys = {k.to_user_string() for a in defs.assets for k in a.keys}
    offline = build_definitions({})  # the offline VLM's graph adds its captioner
    keys |= {k.to_user_string() for a in offline.assets for k in a.keys}
    assert keys == named_assets()


def test_groups_and_jobs_come_from_there(defs):
    groups = {g for a in defs.assets for g in a.group_names_by_key.values()}
    assert groups == {*names.GROUPS, names.DEMO_GROUP}
    jobs = {j.name for j in defs.jobs}
    declared = {v for k, v in vars(names).items() if k.endswith("_JOB")}
    assert jobs <= declared and declared - jobs <= {names.CURRENT_VERSION_CHECKS_JOB}


def test_every_config_s_hint_names_an_asset_of_the_graph(defs):
    keys = {k.to_user_string() for a in defs.assets for k in a.keys}
    for config in INDEXED.values():
        assert {config.index_asset, config.checkpoint_asset} <= keys, config.name
        hint = names.materialize(config.index_asset)
        assert hint.split()[-1] in keys


def _texts(tree: ast.AST) -> list[tuple[int, str]]:
    """Every string the code writes, f-strings with `{}` for what they format."""
    inner = {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            text = "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
            found.append((node, text))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if id(node) not in inner:
                found.append((node, node.value))
    return found


def test_no_message_writes_a_materialize_hint_by_hand():
    """Hints are built by `names.materialize` from named assets, so none can drift."""
    by_hand = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "names.py":
            continue
        tree = ast.parse(path.read_text())
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and node.body
            and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
        }
        for node, text in _texts(tree):
            if id(node) not in docstrings and HINT.search(text):
                by_hand.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: {text!r}")
    assert not by_hand, by_hand
