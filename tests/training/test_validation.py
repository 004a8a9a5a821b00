"""The validation split: carved from the training images, stratified and fixed; best.ckpt chosen on
it; the summary reports the test accuracy of the last epoch and of the chosen checkpoint."""
import json

import numpy as np
import pytest

from apb_ref.data import load_dataset
from apb_ref.data.datasets import VAL_SEED, channel_stats, with_validation
from apb_ref.training import TrainConfig, Trainer, checkpoint, load_model
from apb_ref.training import loop

QUICK = dict(model="digits_cnn", dataset="digits", epochs=4, batch_size=64, lr=0.05, limit_train=400, limit_test=100)


def test_the_split_is_stratified_disjoint_and_the_statistics_are_the_rest():
    full = load_dataset("digits")
    data = with_validation(full, 0.2)
    n_val = round(0.2 * len(full.y_train))
    assert len(data.y_val) == n_val and len(data.y_train) + n_val == len(full.y_train)
    # every training image lands in exactly one of the two parts
    rows = lambda x: {a.tobytes() for a in x}  # noqa: E731
    assert rows(data.x_train) | rows(data.x_val) == rows(full.x_train) and not rows(data.x_train) & rows(data.x_val)
    # stratified: each class's share of the split is its share of the training images (±1 image)
    for c in range(full.num_classes):
        assert abs((data.y_val == c).sum() - 0.2 * (full.y_train == c).sum()) <= 1
    mean, std = channel_stats(data.x_train)
    np.testing.assert_array_equal(data.mean, mean)
    np.testing.assert_array_equal(data.std, std)
    assert (data.x_test is full.x_test) and VAL_SEED == 0
    again = with_validation(load_dataset("digits"), 0.2)  # one fixed split, whatever the run's seed
    np.testing.assert_array_equal(again.y_val, data.y_val)
    np.testing.assert_array_equal(again.x_val, data.x_val)


def test_fraction_zero_is_no_split_and_bad_fractions_are_named():
    full = load_dataset("digits", limit_train=50)
    assert with_validation(full, 0.0) is full and not full.has_validation and full.x_val.shape == (0, 1, 8, 8)
    for bad, message in ((1.0, "in \\[0, 1\\)"), (-0.1, "in \\[0, 1\\)"), (0.001, "is no image"), (True, "number")):
        with pytest.raises(ValueError, match=message):
            with_validation(full, bad)
    with pytest.raises(ValueError, match="val_fraction must be in"):
        TrainConfig(val_fraction=0.95).validate()


def test_best_checkpoint_is_chosen_on_validation_not_test(tmp_path, monkeypatch):
    """Scripted accuracies: validation peaks at epoch 2, test at epoch 3; best.ckpt must be epoch 2
    and the summary must say its test accuracy, not the test set's best."""
    script = {"val": [0.5, 0.9, 0.7, 0.6], "test": [0.4, 0.6, 0.95, 0.5]}
    real = loop.evaluate
    calls = {"val": 0, "test": 0}

    def scripted(model, data, batch_size=500, split="test", progress=None):
        if split in calls and calls[split] < len(script[split]):  # the per-epoch evaluations
            acc = script[split][calls[split]]
            calls[split] += 1
            return {"loss": 1.0 - acc, "accuracy": acc}
        return real(model, data, batch_size, split, progress)

    monkeypatch.setattr(loop, "evaluate", scripted)
    summary = Trainer(TrainConfig(**QUICK), tmp_path, progress=False).run()
    assert summary["best_epoch"] == 2 and summary["best_selected_on"] == "validation"
    assert summary["best_val_accuracy"] == 0.9 and summary["best_test_accuracy"] == 0.6
    assert summary["validation_images"] == 40
    assert checkpoint.load(tmp_path / "best.ckpt")["epoch"] == 2
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["val_accuracy"] for r in records] == script["val"]
    assert [r["test_accuracy"] for r in records] == script["test"]


def test_without_a_split_best_is_chosen_on_test_and_says_so(tmp_path, capsys):
    summary = Trainer(TrainConfig(**{**QUICK, "epochs": 2, "val_fraction": 0.0}), tmp_path, progress=False).run()
    assert "chosen on the test set" in capsys.readouterr().err
    assert summary["best_selected_on"] == "test" and summary["best_val_accuracy"] is None
    assert summary["validation_images"] == 0
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert max(r["test_accuracy"] for r in records) == summary["best_test_accuracy"]
    assert not any("val_accuracy" in r for r in records)


def test_resume_keeps_the_best_epoch_and_a_model_reloads_with_its_split(tmp_path, monkeypatch):
    straight = Trainer(TrainConfig(**QUICK), tmp_path / "a", progress=False).run()
    real = Trainer.train_epoch

    def crash_at_epoch_3(self, epoch):
        if epoch == 2:
            raise KeyboardInterrupt  # killed after epoch 2 was checkpointed
        return real(self, epoch)

    monkeypatch.setattr(Trainer, "train_epoch", crash_at_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        Trainer(TrainConfig(**QUICK), tmp_path / "b", progress=False).run()
    monkeypatch.setattr(Trainer, "train_epoch", real)
    resumed = Trainer(TrainConfig(**QUICK), tmp_path / "b", progress=False).run(resume=True)
    for key in ("best_epoch", "best_val_accuracy", "best_test_accuracy", "test_accuracy"):
        assert resumed[key] == straight[key], key
    model, config, data = load_model(tmp_path / "a" / "last.ckpt")
    assert config.val_fraction == 0.1 and data.has_validation and len(data.y_val) == 40


def test_a_config_saved_before_the_split_reads_back_as_no_split():
    saved = {k: v for k, v in TrainConfig(**QUICK).__dict__.items() if k != "val_fraction"}
    assert TrainConfig.from_dict(saved).val_fraction == 0.0
    assert TrainConfig.from_dict({**saved, "val_fraction": 0.2}).val_fraction == 0.2


def test_a_checkpoint_from_before_the_split_resumes_with_its_test_chosen_best(tmp_path, monkeypatch):
    config = TrainConfig(**{**QUICK, "epochs": 2, "val_fraction": 0.0})
    real = Trainer.train_epoch

    def crash_at_epoch_2(self, epoch):
        if epoch == 1:
            raise KeyboardInterrupt
        return real(self, epoch)

    monkeypatch.setattr(Trainer, "train_epoch", crash_at_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        Trainer(config, tmp_path, progress=False).run()
    monkeypatch.setattr(Trainer, "train_epoch", real)
    state = checkpoint.load(tmp_path / "last.ckpt")
    old_best = state["best_accuracy"]
    del state["best_epoch"], state["best_test_accuracy"]  # as written before the split existed
    checkpoint.save(tmp_path / "last.ckpt", state)
    real_evaluate = loop.evaluate
    calls = []

    def worse_epoch_2(model, data, batch_size=500, split="test", progress=None):
        calls.append(split)
        if len(calls) == 1:  # epoch 2's evaluation: no improvement, so the old best must carry over
            return {"loss": 9.0, "accuracy": 0.0}
        return real_evaluate(model, data, batch_size, split, progress)

    monkeypatch.setattr(loop, "evaluate", worse_epoch_2)
    summary = Trainer(config, tmp_path, progress=False).run(resume=True)
    assert summary["best_test_accuracy"] == old_best and summary["best_selected_on"] == "test"
