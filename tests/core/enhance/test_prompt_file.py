"""A prompts file changes prompts without touching the package, exactly as an edit would.

The file's content, not its name, makes the prompts' versions: an override and the same
edit of `prompts.py` give the same version, hence the same cache keys and code versions,
and only the side that routes to the edited prompt changes. A file that cannot be used is
refused when it is read, naming the file and the line.
"""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from rar_pipeline.cli import main, ui_command
from rar_pipeline.core.enhance import prompts as prompts_module
from rar_pipeline.core.enhance.classify import CandidateType, QueryType
from rar_pipeline.core.enhance.engine import EnhanceOptions
from rar_pipeline.core.enhance.outputs import code_versions
from rar_pipeline.core.enhance.prompt_file import (
    PromptFileError,
    apply_overrides,
    prompt_set,
    to_toml,
)
from rar_pipeline.core.enhance.prompts import PROMPTS, prompt_for
from rar_pipeline.core.settings import load_settings

EXTRA = " Name the materials."
CAPTION = PROMPTS["corpus_caption"]


def _file(tmp_path: Path, text: str, name: str = "prompts.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _caption_override(tmp_path: Path) -> Path:
    return _file(
        tmp_path, f"# our wording\n[corpus_caption]\nsystem = {CAPTION.system + EXTRA!r}\n"
    )


def test_an_override_is_the_same_prompt_as_the_same_edit_of_the_source(tmp_path):
    path = _caption_override(tmp_path)
    loaded = prompt_set(path)
    edited = dataclasses.replace(CAPTION, system=CAPTION.system + EXTRA)
    assert loaded["corpus_caption"].system.endswith(EXTRA)
    assert loaded["corpus_caption"].version == edited.version != CAPTION.version
    assert loaded["corpus_caption"].source == f"{path}:2"
    # the fields the file leaves out keep the shipped values; the other prompts are shipped
    assert loaded["corpus_caption"].max_words == CAPTION.max_words
    assert {n: p.version for n, p in loaded.items() if n != "corpus_caption"} == {
        n: p.version for n, p in PROMPTS.items() if n != "corpus_caption"
    }


def test_no_file_means_the_shipped_prompts(tmp_path):
    assert prompt_set("") == PROMPTS
    assert prompt_set(_file(tmp_path, "# nothing changed yet\n")) == PROMPTS


def test_only_the_side_that_routes_to_the_edited_prompt_changes_version(tmp_path):
    before = code_versions("offline", "m", EnhanceOptions())
    after = code_versions("offline", "m", EnhanceOptions(prompts=str(_caption_override(tmp_path))))
    changed = {asset for asset in before if before[asset] != after[asset]}
    assert changed == {"corpus_captions", "enhanced_corpus"}


def test_an_edit_of_the_source_and_the_same_override_give_the_same_code_versions(
    tmp_path, monkeypatch
):
    from_file = code_versions(
        "offline", "m", EnhanceOptions(prompts=str(_caption_override(tmp_path)))
    )
    edited = dataclasses.replace(CAPTION, system=CAPTION.system + EXTRA)
    monkeypatch.setitem(prompts_module.PROMPTS, "corpus_caption", edited)
    assert code_versions("offline", "m", EnhanceOptions()) == from_file


def test_routing_plans_items_with_the_prompts_in_force(tmp_path):
    loaded = prompt_set(_caption_override(tmp_path))
    assert prompt_for(CandidateType.IMAGE, loaded).system.endswith(EXTRA)
    assert prompt_for(QueryType.QA, loaded) is PROMPTS["qa_rewrite"]
    assert prompt_for(CandidateType.IMAGE) is CAPTION  # no set given: the shipped prompts


def test_the_printed_prompts_read_back_as_the_same_prompts(tmp_path):
    path = _file(tmp_path, to_toml(PROMPTS))
    assert {n: p.version for n, p in prompt_set(path).items()} == {
        n: p.version for n, p in PROMPTS.items()
    }


@pytest.mark.parametrize(
    "system",
    [
        "ends with a quote'",
        "\nstarts on a new line, has '''three quotes''' and a tab\t",
        'control \x01 and DEL \x7f and emoji 😀 and a backslash \\ and "quotes"',
    ],
)
def test_any_prompt_text_survives_the_round_trip(tmp_path, system):
    spec = dataclasses.replace(CAPTION, system=system + " <item_text> </item_text>")
    text = to_toml({"corpus_caption": spec})
    assert tomllib.loads(text)["corpus_caption"]["system"] == spec.system


@pytest.mark.parametrize(
    ("text", "line", "says"),
    [
        ("[query_caption]\nmax_words = 40\n\n[qa_rewrit]\nsystem = 'y'\n", 4,
         "no prompt is named 'qa_rewrit'"),
        ("[query_caption]\nmax_words = 40\nsytem = 'x'\n", 3, "query_caption has no field 'sytem'"),
        ("[query_caption]\nmax_words = '40'\n", 2, "query_caption.max_words must be a int"),
        ("[query_caption]\nsends_image = 1\n", 2, "query_caption.sends_image must be a bool"),
        ("[corpus_caption]\nuser_template = 'Describe the image.'\n", 2,
         "must have exactly {text}"),
        ("[query_caption]\nuser_template = 'Describe {image}.'\n", 2, "must have exactly none"),
        ("[qa_rewrite]\nmax_words = 5\nsystem = 'Rewrite the question.'\n", 3,
         "between <item_text> and </item_text> is data"),
        ("[modification]\nmax_tokens = 0\n", 2, "max_tokens must be at least 1"),
        ("corpus_caption = 'shorter'\n", 1, "corpus_caption must be a table"),
        ("[corpus_caption]\nsystem = 'unterminated\n", 2, "Expected"),
    ],
    ids=["unknown-prompt", "unknown-field", "wrong-type", "bool-not-int", "template-drops-text",
         "template-adds-placeholder", "no-data-rule", "zero-budget", "not-a-table", "not-toml"],
)  # fmt: skip
def test_a_file_that_cannot_be_used_is_refused_naming_file_and_line(tmp_path, text, line, says):
    path = _file(tmp_path, text)
    with pytest.raises(PromptFileError) as refused:
        apply_overrides(path)
    message = str(refused.value)
    assert message.startswith(f"{path}:{line}: "), message
    assert says in message


def test_a_missing_file_is_refused_by_name(tmp_path):
    with pytest.raises(PromptFileError, match="missing.toml: cannot read the prompts file"):
        prompt_set(tmp_path / "missing.toml")


def test_the_setting_is_relative_to_the_project_folder(tmp_path):
    settings = load_settings({"RAR_PROJECT_DIR": str(tmp_path), "RAR_PROMPTS": "prompts.toml"})
    assert settings.enhance.prompts == str(tmp_path / "prompts.toml")
    assert load_settings({}, prompts=str(tmp_path / "p.toml")).enhance.prompts == str(
        tmp_path / "p.toml"
    )
    assert load_settings({}).enhance.prompts == ""


def test_rar_prompts_prints_the_prompts_in_force_and_refuses_a_bad_file(tmp_path, capsys):
    path = _caption_override(tmp_path)
    assert main(["prompts", "--prompts", str(path)]) == 0
    printed = tomllib.loads(capsys.readouterr().out)
    assert printed["corpus_caption"]["system"].endswith(EXTRA)
    assert printed["qa_rewrite"]["system"] == PROMPTS["qa_rewrite"].system

    bad = _file(tmp_path, "[corpus_caption]\nmax_word = 3\n", "bad.toml")
    assert main(["prompts", "--prompts", str(bad)]) == 2
    assert f"rar: error: {bad}:2: corpus_caption has no field 'max_word'" in capsys.readouterr().err


def test_rar_runs_closing_hint_points_the_ui_at_the_same_corpus_and_prompts(tmp_path):
    project = {"RAR_PROJECT_DIR": str(tmp_path)}
    assert ui_command(load_settings(project)) == "make ui"
    other = load_settings(project, data_root=str(tmp_path / "corpus"), prompts="p.toml")
    assert ui_command(other) == (
        f"RAR_DATA_ROOT={tmp_path / 'corpus'} RAR_PROMPTS={tmp_path / 'p.toml'} make ui"
    )
