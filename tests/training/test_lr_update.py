"""The schedule ticks per batch by default (a smooth anneal to zero) or per epoch (`lr_update`)."""
import json

import pytest

from apb_ref.training import TrainConfig, Trainer

QUICK = dict(model="digits_cnn", dataset="digits", epochs=3, batch_size=64, lr=0.05, limit_train=300, limit_test=50,
             val_fraction=0.0)


@pytest.mark.parametrize("unit", ["batch", "epoch"])
def test_the_learning_rate_anneals_per_batch_or_holds_per_epoch(tmp_path, unit):
    trainer = Trainer(TrainConfig(**QUICK, lr_update=unit), tmp_path, progress=False)
    seen = []
    step = trainer.optimizer.step

    def record():  # the lr each batch's update used
        seen.append(trainer.optimizer.param_groups[0]["lr"])
        step()
    trainer.optimizer.step = record
    trainer.run()
    per_epoch = len(seen) // 3
    epochs = [seen[i * per_epoch:(i + 1) * per_epoch] for i in range(3)]
    if unit == "epoch":
        assert all(len(set(e)) == 1 for e in epochs) and epochs[0][0] == 0.05
    else:
        assert all(a > b for a, b in zip(seen, seen[1:])) and seen[0] == 0.05 and seen[-1] < 0.05 / per_epoch
    logged = [json.loads(line)["lr"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert logged == [e[0] for e in epochs]  # the log names each epoch's first lr


def test_a_config_saved_before_the_option_reads_back_per_epoch():
    saved = {k: v for k, v in TrainConfig(**QUICK).__dict__.items() if k != "lr_update"}
    assert TrainConfig.from_dict(saved).lr_update == "epoch"
    assert TrainConfig(**QUICK).lr_update == "batch"
    with pytest.raises(ValueError, match="lr_update"):
        TrainConfig(**QUICK, lr_update="step").validate()
