"""Safe by default: servers on this machine only, weights without pickle, no remote code
unless asked, and paths that stay in the data root (symlinks too, in strict mode).

Decompression bombs: `tests/test_image_bombs.py`. Corpus text trying to instruct the VLM:
`tests/core/enhance/test_prompts.py` (every prompt keeps it inside its data delimiters).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from PIL import Image

from rar_pipeline.core.corpus.images import ImageCheck
from rar_pipeline.core.corpus.mbeir import resolve_in_root
from rar_pipeline.core.enhance.vlm.config import OpenAIConfig, VLMConfig
from rar_pipeline.defs.resources import RetrieverResource, VLMResource

PROJECT = Path(__file__).resolve().parents[1]
PACKAGE = PROJECT / "rar_pipeline"


def test_every_server_the_project_starts_binds_to_this_machine():
    makefile = (PROJECT / "Makefile").read_text()
    assert "dagster dev -h 127.0.0.1" in makefile
    assert "mlflow ui --host 127.0.0.1" in makefile
    assert re.search(r"rar serve(?! --host)", makefile)  # the page's own default
    from rar_pipeline.cli import parse_args

    assert parse_args(["serve"]).host == "127.0.0.1"
    assert OpenAIConfig().base_url.startswith("http://127.0.0.1")


def _calls(name: str) -> list[tuple[Path, ast.Call]]:
    found = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                func = node.func
                called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if called == name:
                    found.append((path, node))
    return found


PICKLERS = {"pickle", "_pickle", "cPickle", "cloudpickle", "dill", "joblib", "shelve"}


def _imports() -> set[str]:
    """The top-level module of every import in the package (`import x.y`, `from x import y`)."""
    found = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found.add(node.module.split(".")[0])
    return found


def test_weights_are_never_unpickled():
    for path, call in _calls("load"):
        owner = getattr(call.func, "value", None)
        if getattr(owner, "id", "") == "torch":
            keywords = {k.arg: k.value for k in call.keywords}
            assert isinstance(keywords.get("weights_only"), ast.Constant), path
            assert keywords["weights_only"].value is True, path
    imports = _imports()
    assert "safetensors" in imports  # what weights are saved with (and the scan sees imports)
    assert imports & PICKLERS == set()
    assert _calls("read_pickle") == []


def test_remote_code_is_off_unless_asked_for():
    assert VLMConfig().trust_remote_code is False
    assert VLMResource().trust_remote_code is False
    assert RetrieverResource().trust_remote_code is False
    for path, call in _calls("from_pretrained"):
        if getattr(call.func.value, "id", "") == "PeftModel":
            continue  # our own saved adapter weights (safetensors), not a hub model's code
        named = {k.arg for k in call.keywords}
        unpacked = {getattr(k.value, "id", None) for k in call.keywords if k.arg is None}
        # the flag by name, or in a ** mapping its module builds with the flag as a key
        passed = "trust_remote_code" in named or bool(unpacked & _mappings_with_the_flag(path))
        assert passed, f"{path}:{call.lineno}: from_pretrained without the flag"


def _mappings_with_the_flag(path: Path) -> set[str]:
    """Names a module assigns a dict literal with a "trust_remote_code" key."""
    return {
        target.id
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict)
        and any(getattr(k, "value", None) == "trust_remote_code" for k in node.value.keys)
        for target in node.targets
        if isinstance(target, ast.Name)
    }  # fmt: skip


class TestStrictPaths:
    @pytest.fixture
    def root(self, tmp_path) -> Path:
        root = tmp_path / "data"
        (root / "images").mkdir(parents=True)
        outside = tmp_path / "secret.png"
        Image.new("RGB", (4, 4)).save(outside)
        (root / "images" / "link.png").symlink_to(outside)
        (root / "images" / "real.png").write_bytes(outside.read_bytes())
        return root

    def test_lexical_escapes_are_always_refused(self, root):
        for rel in ("../secret.png", "/etc/passwd", "images/../../secret.png"):
            with pytest.raises(ValueError, match="leaves the data root|absolute"):
                resolve_in_root(root, rel)

    def test_a_symlink_out_of_the_root_is_followed_unless_strict(self, root):
        assert resolve_in_root(root, "images/link.png").is_file()
        with pytest.raises(ValueError, match="through a symlink"):
            resolve_in_root(root, "images/link.png", strict=True)
        assert resolve_in_root(root, "images/real.png", strict=True).is_file()

    def test_ingest_in_strict_mode_quarantines_it(self, root):
        from rar_pipeline.core.corpus.fields import CANDIDATE_FIELDS, RowError
        from rar_pipeline.core.corpus.records import Modality, Reason

        strict = ImageCheck(strict_paths=True)
        CANDIDATE_FIELDS.check_image(root, Modality.IMAGE, "images/real.png", strict)
        with pytest.raises(RowError) as raised:
            CANDIDATE_FIELDS.check_image(root, Modality.IMAGE, "images/link.png", strict)
        assert raised.value.reason is Reason.PATH_ESCAPES_ROOT
        CANDIDATE_FIELDS.check_image(root, Modality.IMAGE, "images/link.png", ImageCheck())

    def test_the_setting_reaches_the_corpus_resource(self, tmp_path):
        from rar_pipeline.core.settings import load_settings
        from rar_pipeline.defs.resources import resources_from_settings

        on = load_settings({"RAR_PROJECT_DIR": str(tmp_path), "RAR_STRICT_PATHS": "on"})
        corpus = resources_from_settings(on)["corpus"]
        assert corpus.strict_paths and corpus.image_policy().strict_paths
        off = resources_from_settings(load_settings({"RAR_PROJECT_DIR": str(tmp_path)}))
        assert not off["corpus"].strict_paths
