"""BatchNorm re-estimation before evaluation (`--bn-recalibrate`)."""
import numpy as np
import pytest

from apb_ref import nn
from apb_ref.training import TrainConfig, Trainer, checkpoint
from apb_ref.training.loop import recalibrate_batch_norm

QUICK = dict(model="digits_cnn", dataset="digits", epochs=2, batch_size=32, lr=0.05, limit_train=256, limit_test=64)


def test_running_statistics_become_the_mean_of_the_batch_statistics():
    bn = nn.BatchNorm2d(3)
    model = nn.Sequential(bn)
    rng = np.random.default_rng(0)
    xs = [rng.normal(i, 1 + i, (4, 3, 5, 5)).astype(np.float32) for i in range(3)]
    model.eval()
    used = recalibrate_batch_norm(model, ((x, None) for x in xs))
    assert used == 3 and bn.momentum == 0.1 and not model.training
    means = np.mean([x.mean(axis=(0, 2, 3)) for x in xs], axis=0)
    variances = np.mean([x.var(axis=(0, 2, 3), ddof=1) for x in xs], axis=0)  # unbiased, as the running update
    np.testing.assert_allclose(bn.running_mean, means, rtol=1e-5)
    np.testing.assert_allclose(bn.running_var, variances, rtol=1e-4)
    np.testing.assert_array_equal(bn.weight.data, np.ones(3, np.float32))  # parameters untouched


def test_a_run_with_recalibration_evaluates_on_statistics_of_its_final_weights(tmp_path):
    config = TrainConfig(**QUICK, bn_recalibrate=3)
    trainer = Trainer(config, tmp_path, progress=False)
    trainer.run()
    saved = checkpoint.load(tmp_path / "last.ckpt")["model"]
    trainer.recalibrate(config.epochs - 1)  # the same batches again: the same statistics
    for name, value in trainer.model.state_dict().items():
        if "running" in name:
            np.testing.assert_allclose(saved[name], value, rtol=1e-6, err_msg=name)
    plain = Trainer(TrainConfig(**QUICK), tmp_path / "plain", progress=False)
    plain.run()
    assert any(not np.allclose(plain.model.state_dict()[n], saved[n]) for n in saved if "running_mean" in n)


def test_bad_values_are_refused():
    with pytest.raises(ValueError, match="bn_recalibrate"):
        TrainConfig(**QUICK, bn_recalibrate=-1).validate()
    with pytest.raises(ValueError, match="ResNet-20 option"):
        TrainConfig(**QUICK, block="bireal").validate()


def test_bn_momentum_reaches_every_batchnorm():
    from apb_ref.data import load_dataset
    from apb_ref.training.loop import build_model
    model = build_model(TrainConfig(**QUICK, bn_momentum=0.01), load_dataset("digits", limit_train=50))
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm)]
    assert norms and all(m.momentum == 0.01 for m in norms)
    with pytest.raises(ValueError, match="bn_momentum"):
        TrainConfig(**QUICK, bn_momentum=0.0).validate()


def test_one_bit_activations_default_to_bireal_blocks_and_recalibration():
    from apb_ref.data import load_dataset
    from apb_ref.training.loop import build_model, export_args
    resnet = dict(model="resnet20", dataset="digits", pad_to=16)
    one_bit = TrainConfig(**resnet, method="apb", act_bits=1)
    assert (one_bit.model_block, one_bit.recalibrate_batches) == ("bireal", 20)
    for config in (TrainConfig(**resnet, method="apb"), TrainConfig(**resnet, method="apb", act_bits=2)):
        assert (config.model_block, config.recalibrate_batches) == ("basic", 0)
    no_blocks = TrainConfig(**QUICK, method="apb", act_bits=1)  # recalibrated, but it has no blocks to choose
    assert (no_blocks.model_block, no_blocks.recalibrate_batches) == ("basic", 20)
    explicit = TrainConfig(**resnet, method="apb", act_bits=1, block="basic", bn_recalibrate=0)
    assert (explicit.model_block, explicit.recalibrate_batches) == ("basic", 0)
    data = load_dataset("digits", pad_to=16, limit_train=64, limit_test=16)
    assert type(build_model(one_bit, data).blocks[0]).__name__ == "BiRealBlock"
    assert export_args(one_bit, data)[0]["block"] == "bireal"
    # a config saved before these defaults existed still describes its run
    saved = {k: v for k, v in one_bit.__dict__.items() if k not in ("block", "bn_recalibrate")}
    legacy = TrainConfig.from_dict(saved)
    assert (legacy.model_block, legacy.recalibrate_batches) == ("basic", 0)
