"""Hostile but fair use of the command line and of run directories (issue: nothing lost, nothing
trusted blindly). Each finding of the hostile-input review has a regression test named after it;
`test_fuzzed_command_lines_end_in_one_line` fuzzes every command's options."""
import json
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apb_ref.cli import build_parser, main
from apb_ref.training import TrainConfig, Trainer, TrainingDiverged
from apb_ref.training import checkpoint
from apb_ref.training.loop import LAST

QUICK = ["--model", "digits_cnn", "--dataset", "digits", "--epochs", "1", "--limit-train", "96",
         "--limit-test", "64", "--batch-size", "32", "--quiet"]
FUZZ_EXAMPLES = int(os.environ.get("APB_FUZZ_EXAMPLES", "25"))


def run(argv, capsys):
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    return code, [l for l in err.splitlines() if l.strip()]


def one_line_error(code, err):
    return code != 0 and len(err) == 1 and err[0].startswith("apb-ref:")


# --- data loss ----------------------------------------------------------------------------------
def test_demo_out_with_a_checkpoint_keeps_unrelated_files(tmp_path, capsys):
    (tmp_path / LAST).write_bytes(b"an old run")
    (tmp_path / "thesis.tex").write_text("mine")
    code, err = run(["demo", "--out", tmp_path, "--epochs", "1", "--quiet"], capsys)
    assert one_line_error(code, err) and "--overwrite" in err[0]
    assert (tmp_path / "thesis.tex").read_text() == "mine" and (tmp_path / LAST).read_bytes() == b"an old run"
    code, _ = run(["demo", "--out", tmp_path, "--epochs", "1", "--quiet", "--overwrite"], capsys)
    assert code == 0 and (tmp_path / "thesis.tex").read_text() == "mine"
    assert checkpoint.load(tmp_path / LAST)["epoch"] == 1


def test_demo_out_dot_never_empties_the_working_directory(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("notes.txt").write_text("keep me")
    code, err = run(["demo", "--out", ".", "--epochs", "1", "--quiet"], capsys)
    assert one_line_error(code, err) and Path("notes.txt").read_text() == "keep me"


def test_demo_runs_again_over_its_own_run(tmp_path, capsys):
    for _ in range(2):
        assert run(["demo", "--out", tmp_path, "--epochs", "1", "--quiet"], capsys)[0] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["band.png", "best.ckpt", "curves.png", "last.ckpt", "metrics.jsonl", "summary.json"])


def test_train_does_not_replace_a_best_checkpoint_without_last(tmp_path, capsys):
    for name in ("best.ckpt", "metrics.jsonl", "summary.json"):
        (tmp_path / name).write_text(f"precious {name}")
    code, err = run(["train", *QUICK, "--out", tmp_path], capsys)
    assert one_line_error(code, err) and "not empty" in err[0]
    assert (tmp_path / "best.ckpt").read_text() == "precious best.ckpt"
    assert run(["train", *QUICK, "--out", tmp_path, "--overwrite"], capsys)[0] == 0
    assert checkpoint.load(tmp_path / "best.ckpt")["epoch"] == 1


def test_a_torn_last_metrics_line_is_dropped_on_resume(tmp_path, capsys):
    assert run(["train", *QUICK, "--out", tmp_path], capsys)[0] == 0
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 2, "train_lo')  # a kill during the append
    code, err = run(["train", *QUICK, "--out", tmp_path, "--resume"], capsys)
    assert code == 0 and any("torn last line" in l for l in err)
    epochs = [json.loads(l)["epoch"] for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1]


def test_a_torn_line_inside_the_log_is_an_error_naming_it(tmp_path, capsys):
    assert run(["train", *QUICK, "--out", tmp_path], capsys)[0] == 0
    log = tmp_path / "metrics.jsonl"
    log.write_text('{"epo\n' + log.read_text())
    code, err = run(["train", *QUICK, "--out", tmp_path, "--resume"], capsys)
    assert one_line_error(code, err) and "metrics.jsonl line 1" in err[0]


def test_leftover_temp_files_of_the_run_are_cleaned_and_others_kept(tmp_path, capsys):
    (tmp_path / ".last.ckpt.abc123.tmp").write_bytes(b"half a checkpoint")
    (tmp_path / ".mine.tmp").write_bytes(b"not ours")  # a foreign file: the demo needs --overwrite
    assert run(["demo", "--out", tmp_path, "--epochs", "1", "--quiet", "--overwrite"], capsys)[0] == 0
    assert not (tmp_path / ".last.ckpt.abc123.tmp").exists() and (tmp_path / ".mine.tmp").exists()


# --- silent wrong results -----------------------------------------------------------------------
class _PoisonedTrainer(Trainer):
    """Puts inf into a BatchNorm statistic at the end of epoch `poison_epoch` (the loss stays finite)."""

    poison_epoch = 1

    def train_epoch(self, epoch):
        stats = super().train_epoch(epoch)
        if epoch == self.poison_epoch:
            next(m for m in self.model.modules() if hasattr(m, "running_var")).running_var[0] = np.inf
        return stats


def _quick_config(**kw):
    return TrainConfig(**{"model": "digits_cnn", "epochs": 2, "batch_size": 32, "limit_train": 96,
                          "limit_test": 64, **kw})


def test_nan_guard_checks_parameters_and_buffers_not_only_the_loss(tmp_path):
    trainer = _PoisonedTrainer(_quick_config(), tmp_path, progress=False)
    with pytest.raises(TrainingDiverged, match=r"running_var.*last good checkpoint is .*last.ckpt \(epoch 1\)"):
        trainer.run()
    state = checkpoint.load(tmp_path / LAST)
    assert state["epoch"] == 1 and all(np.isfinite(v).all() for v in state["model"].values())


def test_nan_guard_says_when_there_is_no_good_checkpoint(tmp_path):
    trainer = _PoisonedTrainer(_quick_config(), tmp_path, progress=False)
    trainer.poison_epoch = 0
    with pytest.raises(TrainingDiverged, match="no good checkpoint yet"):
        trainer.run()
    assert not (tmp_path / LAST).exists()


def test_apb_alpha_delta_stay_positive_and_finite_under_a_huge_step(tmp_path):
    cfg = _quick_config(method="apb", lr_ab=1e3, bits_per_weight=1.5)
    trainer = Trainer(cfg, tmp_path, progress=False)
    trainer.run()
    qs = [m.weight_quantizer for m in trainer.model.modules() if hasattr(m, "weight_quantizer")]
    values = np.array([[float(q.alpha.data), float(q.delta.data)] for q in qs])
    assert np.isfinite(values).all() and (values >= qs[0].MIN_SCALE).all()


@pytest.mark.parametrize("flag, value", [
    ("--lr-ab", "inf"), ("--lr-ab", "nan"), ("--lr-ab", "-1"), ("--budget-weight", "nan"), ("--budget-weight", "inf"),
    ("--weight-decay", "inf"), ("--lr", "inf"), ("--lr", "nan"), ("--momentum", "1.5"), ("--pad-to", "100000"),
    ("--bits-per-weight", "inf"), ("--fp-fraction", "nan"), ("--epochs", "0"), ("--label-smoothing", "nan"),
    ("--freeze-mask-epoch", "-2"), ("--seed", "-1"),
])
def test_every_numeric_option_is_checked_finite_and_in_range(tmp_path, capsys, flag, value):
    code, err = run(["train", *QUICK, "--method", "apb", flag, value, "--out", tmp_path / "r"], capsys)
    assert one_line_error(code, err)
    assert flag.lstrip("-").replace("-", "_") in err[0] or flag.lstrip("-").replace("-", "_") == "bits_per_weight"
    assert not (tmp_path / "r" / LAST).exists()


def test_export_refuses_non_finite_values(tmp_path, capsys):
    assert run(["train", *QUICK, "--method", "apb", "--out", tmp_path], capsys)[0] == 0
    state = checkpoint.load(tmp_path / LAST)
    key = next(k for k in state["model"] if k.endswith("weight") and state["model"][k].ndim == 4)
    state["model"][key][0, 0, 0, 0] = np.nan
    checkpoint.save(tmp_path / "bad.ckpt", state)
    code, err = run(["export", tmp_path / "bad.ckpt", "-o", tmp_path / "m.apbz"], capsys)
    assert one_line_error(code, err) and "NaN" in err[0] and not (tmp_path / "m.apbz").exists()


def test_checkpoint_config_of_the_wrong_type_is_one_error(tmp_path, capsys):
    assert run(["train", *QUICK, "--out", tmp_path], capsys)[0] == 0
    state = checkpoint.load(tmp_path / LAST)
    state["config"]["epochs"] = "ten"
    checkpoint.save(tmp_path / "bad.ckpt", state)
    code, err = run(["summary", tmp_path / "bad.ckpt"], capsys)
    assert one_line_error(code, err) and "epochs" in err[0]


# --- tracebacks where one line was due ----------------------------------------------------------
@pytest.mark.parametrize("where", ["under a file", "where nothing may be written"])
def test_out_that_cannot_be_written_is_one_line(tmp_path, capsys, where):
    (tmp_path / "f").write_text("x")
    out = tmp_path / "f" / "run" if where == "under a file" else "/proc/apb-ref-run"  # even root cannot mkdir there
    code, err = run(["train", *QUICK, "--out", out], capsys)
    assert one_line_error(code, err)


@pytest.mark.parametrize("argv", [["eval", "--batch-size", "0"], ["bench", "--repeats", "0"], ["demo", "--epochs", "-1"],
                                  ["eval", "--pad-to", "0"]])
def test_non_positive_counts_are_usage_errors(argv, capsys):
    """eval --batch-size 0 divided by zero (found by the CLI fuzz test)."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and "invalid positive_int value" in capsys.readouterr().err


def test_export_to_an_existing_directory_is_one_line(tmp_path, capsys):
    assert run(["train", *QUICK, "--out", tmp_path / "r"], capsys)[0] == 0
    code, err = run(["export", tmp_path / "r" / LAST, "-o", tmp_path], capsys)
    assert one_line_error(code, err) and "directory" in err[0]


@pytest.mark.parametrize("where", ["build_parser", "cmd_train"])
def test_ctrl_c_at_any_time_is_one_line(tmp_path, capsys, monkeypatch, where):
    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(f"apb_ref.cli.{where}", interrupted)
    if where == "cmd_train":  # the parser bound the original function: rebind through the parser
        parser = build_parser()
        monkeypatch.setattr("apb_ref.cli.build_parser", lambda: parser)
        parser._subparsers._group_actions[0].choices["train"].set_defaults(func=interrupted)
    code, err = run(["train", *QUICK, "--out", tmp_path], capsys)
    assert code == 130 and len(err) == 1 and "interrupted" in err[0]


# --- fuzzing every command's options --------------------------------------------------------------
def _values():
    return st.one_of(
        st.integers(-3, 3).map(str), st.sampled_from(["0", "-1", "1e30", "nan", "inf", "-inf", "2e9", "100000",
                                                       "", " ", "x", "../..", "/dev/null", "{}", "é"]),
        st.floats(allow_nan=True).map(repr), st.text(max_size=8))


def _options(command):
    sub = build_parser()._subparsers._group_actions[0].choices[command]
    flags = [a.option_strings[-1] for a in sub._actions if a.option_strings and a.dest != "help"]
    return st.lists(st.tuples(st.sampled_from(flags), _values()), max_size=4)


@pytest.fixture
def restore_cwd():
    cwd = os.getcwd()
    yield
    os.chdir(cwd)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert main(["train", *QUICK, "--method", "apb", "--out", str(out)]) == 0
    assert main(["export", str(out / LAST), "-o", str(out / "m.apbz")]) == 0
    return out


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_command_lines_end_in_one_line(data, trained, tmp_path, capsys, restore_cwd):
    """Any combination of options either works (exit 0) or ends as argparse's usage error (exit 2) or
    one line 'apb-ref: ...' with a non-zero exit: never a traceback."""
    os.chdir(tmp_path)  # a drawn relative path (export -o 1) lands here, not in the repository
    command = data.draw(st.sampled_from(["train", "eval", "export", "summary", "demo"]), label="command")
    pairs = data.draw(_options(command), label="options")
    argv = [command]
    if command in ("export", "summary"):
        argv.append(data.draw(st.sampled_from([str(trained / LAST), str(trained / "m.apbz"), str(trained),
                                               "/nonexistent.ckpt"]), label="file"))
    for flag, value in pairs:
        argv += [flag] if flag in ("--nesterov", "--resume", "--quiet", "--json", "--overwrite") else [flag, value]
    if command == "export" and "-o" not in argv and "--output" not in argv:
        argv += ["-o", str(tmp_path / "x.apbz")]
    if command in ("train", "demo"):  # keep runs short whatever was drawn: later flags win
        argv += ["--epochs", "1", "--quiet", "--out", str(tmp_path / "run")]
        if command == "train":
            argv += ["--limit-train", "64", "--limit-test", "32", "--dataset", "digits", "--model", "digits_cnn"]
    if command == "eval" and "--packed" not in argv and "--checkpoint" not in argv:
        argv += ["--packed", str(trained / "m.apbz")]
    try:
        code = main(argv)
    except SystemExit as e:  # argparse: a usage line and exit 2
        assert e.code == 2, argv
        capsys.readouterr()
        return
    err = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
    assert code == 0 or one_line_error(code, err), (argv, code, err)
