"""The training loop: reproducibility, exact resume, NaN guard, checkpoints, CLI."""
import os
import json

import numpy as np
import pytest

from apb_ref.training import checkpoint
from apb_ref.cli import main
from apb_ref.training import TrainConfig, Trainer, TrainingDiverged, load_model

QUICK = dict(model="digits_cnn", dataset="digits", epochs=2, batch_size=64, lr=0.05, limit_train=256, limit_test=128)


def _weights(trainer):
    return {k: v.copy() for k, v in trainer.model.state_dict().items()}


@pytest.mark.parametrize("lr_update", ["batch", "epoch"])
def test_resume_continues_exactly_as_if_uninterrupted(tmp_path, lr_update):
    config = TrainConfig(**QUICK, lr_update=lr_update)
    straight = Trainer(config, tmp_path / "a", progress=False)
    straight.run()
    first = Trainer(config, tmp_path / "b", progress=False)
    first.train_epoch(0)  # simulate a run killed after epoch 1 was checkpointed:
    first.end_epoch_schedules()
    first.epoch = 1
    checkpoint.save(tmp_path / "b" / "last.ckpt", first.state())
    resumed = Trainer(config, tmp_path / "b", progress=False)
    resumed.run(resume=True)
    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert resumed.optimizer.state_dict()["param_groups"][0]["lr"] == straight.optimizer.state_dict()["param_groups"][0]["lr"]


def test_same_seed_same_numbers_bit_for_bit(tmp_path):
    s1 = Trainer(TrainConfig(**QUICK), tmp_path / "a", progress=False).run()
    s2 = Trainer(TrainConfig(**QUICK), tmp_path / "b", progress=False).run()
    assert s1["test_accuracy"] == s2["test_accuracy"] and s1["test_loss"] == s2["test_loss"]


def test_run_directory_contents_and_summary(tmp_path):
    summary = Trainer(TrainConfig(**QUICK), tmp_path, progress=False).run()
    for name in ("last.ckpt", "best.ckpt", "metrics.jsonl", "summary.json"):
        assert (tmp_path / name).exists(), name
    saved = json.loads((tmp_path / "summary.json").read_text())
    for key in ("test_accuracy", "epochs", "wall_seconds", "images_per_second", "model", "dataset", "seed"):
        assert key in saved, key
    assert 0.0 <= saved["test_accuracy"] <= 1.0 and saved["epochs"] == 2
    lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [l["epoch"] for l in lines] == [1, 2]
    assert saved["test_accuracy"] == summary["test_accuracy"]


def test_existing_run_is_not_overwritten_without_resume(tmp_path):
    Trainer(TrainConfig(**{**QUICK, "epochs": 1}), tmp_path, progress=False).run()
    with pytest.raises(FileExistsError, match="--resume"):
        Trainer(TrainConfig(**{**QUICK, "epochs": 1}), tmp_path, progress=False).run()


def test_resume_with_different_options_is_refused(tmp_path):
    Trainer(TrainConfig(**{**QUICK, "epochs": 1}), tmp_path, progress=False).run()
    with pytest.raises(ValueError, match="lr"):
        Trainer(TrainConfig(**{**QUICK, "epochs": 1, "lr": 0.5}), tmp_path, progress=False).run(resume=True)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    trainer = Trainer(TrainConfig(**{**QUICK, "epochs": 3}), tmp_path, progress=False)
    original = trainer.train_epoch
    calls = []

    def poisoned(epoch):
        calls.append(epoch)
        if epoch == 1:  # blow the weights up in the second epoch
            for p in trainer.model.parameters():
                p.data[...] = np.nan
        return original(epoch)
    trainer.train_epoch = poisoned
    with pytest.raises(TrainingDiverged, match="epoch 2"):
        trainer.run()
    good = checkpoint.load(tmp_path / "last.ckpt")
    assert good["epoch"] == 1
    assert all(np.isfinite(v).all() for v in good["model"].values())


def test_corrupt_and_missing_checkpoints_raise_clear_errors(tmp_path):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a zip at all")
    with pytest.raises(ValueError, match="corrupt"):
        checkpoint.load(bad)
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        checkpoint.load(tmp_path / "missing.ckpt")
    Trainer(TrainConfig(**{**QUICK, "epochs": 1}), tmp_path / "run", progress=False).run()
    data = (tmp_path / "run" / "last.ckpt").read_bytes()
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupt"):
        checkpoint.load(truncated)


def test_checkpoint_round_trips_nested_values(tmp_path):
    tree = {"a": np.arange(3.0), "b": {(0, 1): {"step": 3, "m": np.ones((2, 2), np.float32)}}, "c": (1, "x", None), "d": [1.5]}
    checkpoint.save(tmp_path / "t.ckpt", tree)
    back = checkpoint.load(tmp_path / "t.ckpt")
    np.testing.assert_array_equal(back["a"], tree["a"])
    assert back["b"][(0, 1)]["step"] == 3 and back["b"][(0, 1)]["m"].dtype == np.float32
    assert back["c"] == (1, "x", None) and back["d"] == [1.5]


def test_cli_train_then_eval(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--limit-train", "256", "--limit-test", "100", "--out", str(out), "--quiet"]) == 0
    assert (out / "curves.png").stat().st_size > 1000
    result = capsys.readouterr().out.splitlines()  # --quiet: only the result line
    assert len(result) == 1 and result[0].startswith("test accuracy")
    assert main(["eval", "--checkpoint", str(out / "best.ckpt"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    saved = json.loads((out / "summary.json").read_text())
    model, config, data = load_model(out / "last.ckpt")
    assert report["images"] == 100 and config.limit_test == 100
    assert report["test_accuracy"] == saved["test_accuracy"]


def test_cli_reports_bad_input_without_a_traceback(tmp_path, capsys):
    assert main(["train", "--epochs", "0", "--out", str(tmp_path)]) == 2
    assert "epochs" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(tmp_path / "nope.ckpt")]) == 2
    assert "nope.ckpt" in capsys.readouterr().err


def test_atomic_write_leaves_no_temporary_and_gives_umask_permissions(tmp_path):
    target = tmp_path / "run" / "file.bin"
    checkpoint.atomic_write_bytes(target, b"first")
    checkpoint.atomic_write_bytes(target, b"second")
    assert target.read_bytes() == b"second"
    assert [p.name for p in target.parent.iterdir()] == ["file.bin"]
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's 0600
