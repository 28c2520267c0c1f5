"""The contrastive trainer: learns, is seeded, resumes after a kill, stops early, keeps the best.

A toy retrieval problem in text: each query names a colour and a shape in other words than
its positive's ("the scarlet round one" -> "a red circle"), so frozen MiniLM features need a
trained projection to match them. Features are cached per test session.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from rar_pipeline.core.retrieval.data import TrainingData, TrainQuery, ValQuery
from rar_pipeline.core.retrieval.encoders.base import EncodeItem
from rar_pipeline.core.retrieval.encoders.factory import create_encoder
from rar_pipeline.core.retrieval.options import TrainOptions
from rar_pipeline.core.retrieval.train import train_retriever
from rar_pipeline.core.retrieval.validation import validation_recall

COLOURS = {
    "red": "scarlet",
    "blue": "azure",
    "green": "emerald",
    "yellow": "golden",
    "black": "jet",
    "white": "snowy",
}
SHAPES = {
    "circle": "round",
    "square": "boxy",
    "triangle": "three-cornered",
    "star": "pointy",
    "heart": "romantic",
}


def toy_data() -> TrainingData:
    candidates, train, val = {}, [], []
    for i, (colour, synonym) in enumerate(COLOURS.items()):
        for j, (shape, adjective) in enumerate(SHAPES.items()):
            did = f"{colour}-{shape}"
            candidates[did] = EncodeItem(f"a {colour} {shape}")
            item = EncodeItem(f"the {synonym} {adjective} one")
            if (i + j) % 5 == 0:
                val.append(ValQuery(f"q-{did}", item, frozenset({did}), "pool"))
            else:
                negative = f"{colour}-{'circle' if shape != 'circle' else 'square'}"
                train.append(TrainQuery(f"q-{did}", item, (did,), (negative,), "pool"))
    return TrainingData(train, val, candidates, {"pool": list(candidates)})


@pytest.fixture(scope="module")
def features(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("features")


def encoder(features: Path):
    return create_encoder("offline", cache_dir=features, dim=32, seed=0)


FAST = TrainOptions(epochs=6, batch_size=8, lr=5e-3, checkpoint_every=2, patience=10)


def weights(enc) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in enc.module.state_dict().items()}


def test_training_raises_validation_recall_and_keeps_the_best_weights(tmp_path, features):
    data = toy_data()
    enc = encoder(features)
    before = validation_recall(enc, data, k=1)
    seen = []
    result = train_retriever(
        enc, data, FAST, tmp_path / "state", observe=lambda *e: seen.append(e), log=lambda _: None
    )
    assert result.best_recall > before
    # the encoder ends holding the weights of its best validation, not its last
    assert validation_recall(result.encoder, data, k=1) == pytest.approx(result.best_recall)
    assert [h["epoch"] for h in result.history] == list(range(6))
    steps = [e for e in seen if e[0] == "step"]
    assert len(steps) == result.steps == 6 * -(-len(data.train) // 8)
    assert {"loss", "temperature", "samples_per_s"} <= set(steps[0][2])
    assert [e[2]["val_recall_at_1"] for e in seen if e[0] == "eval"] == [
        h["recall"] for h in result.history
    ]
    assert not (tmp_path / "state").exists()  # the resumable state goes once training ends


def test_the_same_seed_trains_the_same_weights(tmp_path, features):
    one = train_retriever(encoder(features), toy_data(), FAST, tmp_path / "a", log=lambda _: 0)
    two = train_retriever(encoder(features), toy_data(), FAST, tmp_path / "b", log=lambda _: 0)
    for key, value in weights(one.encoder).items():
        assert np.array_equal(value, weights(two.encoder)[key])


def test_gradient_accumulation_takes_one_step_per_group_of_batches(tmp_path, features):
    options = TrainOptions(epochs=2, batch_size=4, grad_accum=3, checkpoint_every=100)
    result = train_retriever(encoder(features), toy_data(), options, tmp_path / "s", log=print)
    batches = -(-len(toy_data().train) // 4)
    assert result.steps == 2 * -(-batches // 3)


def test_training_stops_once_validation_recall_stops_improving(tmp_path, features):
    frozen = TrainOptions(epochs=20, batch_size=8, lr=0.0, patience=2)  # nothing can improve
    logged = []
    result = train_retriever(
        encoder(features), toy_data(), frozen, tmp_path / "s", log=logged.append
    )
    assert result.epochs == 3 and result.best_epoch == 0
    assert "did not improve for 2 epochs" in result.stopped and result.stopped in logged


def test_learnable_temperature_moves(tmp_path, features):
    options = TrainOptions(epochs=2, batch_size=8, learn_temperature=True, lr=1e-2)
    seen = []
    train_retriever(
        encoder(features),
        toy_data(),
        options,
        tmp_path / "s",
        observe=lambda *e: seen.append(e),
        log=lambda _: 0,
    )
    temperatures = [e[2]["temperature"] for e in seen if e[0] == "step"]
    assert temperatures[-1] != pytest.approx(0.05)


def test_mined_negatives_join_the_batches(tmp_path, features, monkeypatch):
    from rar_pipeline.core.retrieval import train as train_module

    mined_calls = []
    real = train_module.mine_train_negatives

    def spy(enc, data, k):
        found = real(enc, data, k)
        mined_calls.append(found)
        return found

    monkeypatch.setattr(train_module, "mine_train_negatives", spy)
    options = TrainOptions(epochs=2, batch_size=8, mined_negatives=2, hard_negatives=0)
    data = toy_data()
    train_retriever(encoder(features), data, options, tmp_path / "s", log=lambda _: 0)
    assert len(mined_calls) == 2  # once per epoch, with the retriever as it then is
    labelled = data.labelled()
    for found in mined_calls:
        assert all(len(m) == 2 and not set(m) & labelled[qid] for qid, m in found.items())


RUN = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from core.retrieval.test_train import FAST, encoder, toy_data
    from rar_pipeline.core.retrieval.train import train_retriever

    def observe(kind, step, metrics):
        if kind == "step" and step == {kill_at}:
            os.kill(os.getpid(), signal.SIGKILL)  # mid-epoch, after the save of step {saved}

    train_retriever(encoder(Path({features!r})), toy_data(), FAST, Path({state!r}),
                    observe=observe, log=lambda _: None)
    """
)


def test_a_run_killed_mid_training_resumes_from_its_last_checkpoint(tmp_path, features):
    state = tmp_path / "state"
    script = RUN.format(
        tests=str(Path(__file__).resolve().parents[2]),
        kill_at=5,
        saved=4,
        features=str(features),
        state=str(state),
    )
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    saved = json.loads((state / "trainer.json").read_text())["position"]
    assert saved["step"] == 4
    logged = []
    resumed = train_retriever(encoder(features), toy_data(), FAST, state, log=logged.append)
    assert resumed.resumed_from_step == 4 and any("resuming from step 4" in m for m in logged)
    whole = train_retriever(encoder(features), toy_data(), FAST, tmp_path / "w", log=print)
    assert resumed.steps == whole.steps
    for key, value in weights(whole.encoder).items():  # as if it had never been killed
        assert np.array_equal(value, weights(resumed.encoder)[key]), key


class Crash(Exception):
    pass


def crash_at(step_to_crash: int):
    def observe(kind, step, metrics):
        if kind == "step" and step == step_to_crash:
            raise Crash

    return observe


def test_a_saved_state_from_other_options_is_not_resumed(tmp_path, features):
    state = tmp_path / "state"
    with pytest.raises(Crash):
        train_retriever(encoder(features), toy_data(), FAST, state, observe=crash_at(3))
    assert json.loads((state / "trainer.json").read_text())["position"]["step"] == 2
    other = TrainOptions(epochs=1, batch_size=8, lr=1e-3)
    logged = []
    result = train_retriever(encoder(features), toy_data(), other, state, log=logged.append)
    assert result.resumed_from_step == 0
    assert any("starting afresh" in m for m in logged)


def test_no_train_query_is_a_clear_error(tmp_path, features):
    empty = TrainingData([], [], {}, {})
    with pytest.raises(ValueError, match="no train query"):
        train_retriever(encoder(features), empty, FAST, tmp_path / "s")
