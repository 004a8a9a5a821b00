"""Distillation from a teacher checkpoint (`--teacher`, `--kd-weight`, `--kd-temperature`)."""
import numpy as np
import pytest

from apb_ref.training import TrainConfig, Trainer

QUICK = dict(model="digits_cnn", dataset="digits", epochs=1, batch_size=32, lr=0.05, limit_train=200, limit_test=50)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    Trainer(TrainConfig(**{**QUICK, "epochs": 2}), out, progress=False).run()
    return str(out / "last.ckpt")


def _weights(config, out):
    trainer = Trainer(config, out, progress=False)
    trainer.run()
    return trainer.model.state_dict()


def test_weight_zero_trains_exactly_as_without_a_teacher_and_a_weight_changes_the_run(teacher, tmp_path):
    student = dict(QUICK, method="bnn", act_bits=1)
    plain = _weights(TrainConfig(**student), tmp_path / "plain")
    zero = _weights(TrainConfig(**student, teacher=teacher, kd_weight=0.0), tmp_path / "zero")
    for name in plain:
        np.testing.assert_array_equal(plain[name], zero[name], err_msg=name)
    taught = _weights(TrainConfig(**student, teacher=teacher, kd_weight=0.7, kd_temperature=2.0), tmp_path / "kd")
    assert any(not np.array_equal(plain[n], taught[n]) for n in plain)


def test_a_teacher_of_other_data_and_orphan_options_are_refused(teacher, tmp_path):
    with pytest.raises(ValueError, match="trained on other data: limit_train 200 \\(run: 100\\)"):
        Trainer(TrainConfig(**{**QUICK, "limit_train": 100}, teacher=teacher), tmp_path / "a", progress=False)
    with pytest.raises(ValueError, match="give teacher"):
        TrainConfig(**QUICK, kd_weight=0.3).validate()
    with pytest.raises(ValueError, match="kd_temperature"):
        TrainConfig(**QUICK, teacher=teacher, kd_temperature=0.0).validate()
    with pytest.raises(FileNotFoundError, match="--teacher"):
        Trainer(TrainConfig(**QUICK, teacher=str(tmp_path / "none.ckpt")), tmp_path / "b", progress=False)
