"""Two-step training (`--float-act-epochs`): float activations first, then the low-bit ones."""
import json

import numpy as np
import pytest

from apb_ref.quant.activations import BinaryActivation, FullPrecision
from apb_ref.training import TrainConfig, Trainer

QUICK = dict(model="digits_cnn", dataset="digits", epochs=2, batch_size=32, lr=0.05, limit_train=200, limit_test=50,
             method="bnn", act="hardtanh")


def test_the_first_epochs_train_as_float_activations_then_the_bits_return(tmp_path):
    two_step = Trainer(TrainConfig(**QUICK, act_bits=1, float_act_epochs=1), tmp_path / "a", progress=False)
    float_run = Trainer(TrainConfig(**QUICK, act_bits=32), tmp_path / "b", progress=False)
    two_step.train_epoch(0)
    float_run.train_epoch(0)
    a, b = two_step.model.state_dict(), float_run.model.state_dict()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert all(isinstance(m.act_quantizer, FullPrecision) for m in two_step.quantized)
    two_step.train_epoch(1)
    assert all(isinstance(m.act_quantizer, BinaryActivation) for m in two_step.quantized)


def test_the_metrics_say_which_epochs_ran_on_float_activations(tmp_path):
    config = TrainConfig(**{**QUICK, "epochs": 3}, act_bits=1, float_act_epochs=2)
    Trainer(config, tmp_path, progress=False).run()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["float_activations"] for r in records] == [True, True, False]


@pytest.mark.parametrize("changes", [dict(act_bits=32, float_act_epochs=1), dict(act_bits=1, float_act_epochs=2)])
def test_a_two_step_without_room_for_low_bits_is_refused(changes):
    with pytest.raises(ValueError, match="float_act_epochs"):
        TrainConfig(**QUICK, **changes).validate()
