"""apb-ref sweep: the smoke grid end to end, nothing retrained on a second run, an interrupted run
resumed where it stopped, and refusals (a directory of another config or of someone else's files, a
budget for a method without one, recipe flags the sweep sets) that leave everything untouched."""
import contextlib
import io
import json
import math
from pathlib import Path

import pytest

from apb_ref.cli import main
from apb_ref.quant import METHODS
from apb_ref.sweep import SMOKE_RECIPE, Cell, parse_cell, parse_cells, run_sweep, smoke_cells, tradeoff_figure
from apb_ref.training import TrainConfig, Trainer

BUDGETED = next(name for name, m in METHODS.items() if m.budgeted)
UNBUDGETED = next(name for name, m in METHODS.items() if not m.budgeted)


def sweep_cli(*argv) -> tuple[int, str, str]:
    """exit code, stdout, stderr of `apb-ref sweep ARGV`."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["sweep", *map(str, argv)])
    return code, out.getvalue(), err.getvalue()


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under root: its bytes and modification time."""
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def never_train(*args, **kwargs):
    raise AssertionError("the sweep trained a run it should have read back")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """`apb-ref sweep --smoke` once for the module: (directory, stdout)."""
    out = tmp_path_factory.mktemp("smoke")
    code, stdout, stderr = sweep_cli("--smoke", "--out", out, "--quiet")
    assert code == 0, stderr
    return out, stdout


def test_the_smoke_grid_runs_every_method_end_to_end(smoke):
    out, stdout = smoke
    cells = smoke_cells()
    assert {c.method for c in cells} == set(METHODS)  # a newly registered method joins the smoke grid
    for cell in cells:
        assert (out / cell.run_dir(0) / "summary.json").is_file(), cell
    report = json.loads((out / "sweep.json").read_text())
    assert [r["cell"] for r in report["rows"]] == [c.label for c in cells]
    for row in report["rows"]:
        assert 0.0 <= row["test_accuracy"] <= 1.0 and math.isfinite(row["test_accuracy"]), row
        assert row["packed_bytes"] > 0 and row["model_bits"] > 0, row
        assert (row["bits_per_weight"] < 32) == (row["method"] != "fp"), row
    assert [g["cell"] for g in report["groups"]] == [c.label for c in cells]
    assert all(g["test_accuracy_std"] is None for g in report["groups"])  # one seed: no spread to report
    assert report["recipe"]["model"] == SMOKE_RECIPE["model"] and "method" not in report["recipe"]
    png = (out / "tradeoff.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    assert stdout.count(": running") == len(cells) and f"[{len(cells)}/{len(cells)}]" in stdout
    assert "packed bytes" in stdout and "sweep.json" in stdout.splitlines()[-1]


def test_a_second_run_trains_nothing_and_gives_the_same_rows(smoke, monkeypatch):
    out, _ = smoke
    runs = {p: v for p, v in snapshot(out).items() if "/" in p}  # everything in the run directories
    rows = json.loads((out / "sweep.json").read_text())["rows"]
    monkeypatch.setattr(Trainer, "run", never_train)
    code, stdout, stderr = sweep_cli("--smoke", "--out", out, "--quiet")
    assert code == 0, stderr
    assert stdout.count("done (cached)") == len(smoke_cells())
    assert json.loads((out / "sweep.json").read_text())["rows"] == rows
    assert {p: v for p, v in snapshot(out).items() if "/" in p} == runs


def test_report_only_rebuilds_the_report_from_the_runs(smoke, monkeypatch):
    out, _ = smoke
    rows = json.loads((out / "sweep.json").read_text())["rows"]
    (out / "sweep.json").unlink()
    (out / "tradeoff.png").unlink()
    monkeypatch.setattr(Trainer, "run", never_train)
    code, _, stderr = sweep_cli("--report-only", "--out", out)
    assert code == 0, stderr
    assert json.loads((out / "sweep.json").read_text())["rows"] == rows
    assert (out / "tradeoff.png").stat().st_size > 0


def test_a_directory_of_another_config_is_refused_before_anything_runs(smoke):
    out, _ = smoke
    before = snapshot(out)
    # the first cell is new: a refusal found only when the sweep reached fp-s0 would have trained it
    code, _, stderr = sweep_cli("--smoke", "--out", out, "--cells", f"{BUDGETED}@1.2", "fp", "--quiet", "--",
                                "--lr", "0.01")
    assert code == 2
    assert str(out / "fp-s0") in stderr and "lr 0.005 -> 0.01" in stderr and len(stderr.splitlines()) == 1
    assert snapshot(out) == before and not (out / Cell(BUDGETED, 1.2).run_dir(0)).exists()


def test_a_directory_of_someone_elses_files_is_refused_and_kept(tmp_path):
    mine = tmp_path / "fp-s0" / "notes.txt"
    mine.parent.mkdir()
    mine.write_text("keep me")
    code, _, stderr = sweep_cli("--smoke", "--out", tmp_path, "--cells", "fp", "--quiet")
    assert code == 2 and str(mine.parent) in stderr and "notes.txt" in stderr
    assert mine.read_text() == "keep me" and sorted(p.name for p in tmp_path.rglob("*")) == ["fp-s0", "notes.txt"]


def test_an_interrupted_run_resumes_where_it_stopped(tmp_path, monkeypatch):
    recipe = TrainConfig(**{**SMOKE_RECIPE, "epochs": 2, "limit_train": 200, "limit_test": 100})
    cells = [Cell(BUDGETED, 1.5)]
    train_epoch = Trainer.train_epoch

    def killed_in_epoch_2(self, epoch):
        if epoch == 1:
            raise KeyboardInterrupt  # as Ctrl-C: epoch 1 is checkpointed, no summary yet
        return train_epoch(self, epoch)
    monkeypatch.setattr(Trainer, "train_epoch", killed_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(cells, [0], recipe, tmp_path / "a", progress=False, log=lambda line: None)
    run = tmp_path / "a" / cells[0].run_dir(0)
    assert (run / "last.ckpt").exists() and not (run / "summary.json").exists()

    trained = []

    def counted(self, epoch):
        trained.append(epoch)
        return train_epoch(self, epoch)
    monkeypatch.setattr(Trainer, "train_epoch", counted)
    lines: list[str] = []
    resumed = run_sweep(cells, [0], recipe, tmp_path / "a", progress=False, log=lines.append)
    assert trained == [1], "the finished epoch was trained again"
    assert any(line.endswith(": resuming from epoch 1/2") for line in lines), lines
    assert [json.loads(l)["epoch"] for l in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert (run / "curves.png").exists()  # a run directory as `apb-ref train` leaves it
    straight = run_sweep(cells, [0], recipe, tmp_path / "b", progress=False, log=lambda line: None, run_figures=False)
    assert resumed["rows"][0]["test_accuracy"] == straight["rows"][0]["test_accuracy"]


def test_a_budget_for_a_method_without_one_is_refused(tmp_path):
    code, _, stderr = sweep_cli("--out", tmp_path, "--cells", f"{BUDGETED}@1.5", f"{UNBUDGETED}@1.5")
    assert code == 2 and f"{UNBUDGETED}@1.5" in stderr and "takes no bits/weight budget" in stderr
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("text, message", [
    ("nope", "unknown method 'nope'"),
    (f"{BUDGETED}@x", "must be a number"),
])
def test_a_malformed_cell_is_named(text, message):
    with pytest.raises(ValueError, match=message) as e:
        parse_cell(text)
    assert repr(text) in str(e.value)


def test_cells_parse_from_spaces_and_commas_and_each_cell_once():
    assert parse_cells([f"fp, {BUDGETED}@1.6", f"{BUDGETED}@2"]) == [Cell("fp"), Cell(BUDGETED, 1.6), Cell(BUDGETED, 2.0)]
    assert Cell(BUDGETED, 2.0).run_dir(3) == f"{BUDGETED}-b2-s3" and Cell("fp").run_dir(0) == "fp-s0"
    with pytest.raises(ValueError, match="twice"):
        parse_cells([f"{BUDGETED}@1.6 {BUDGETED}@1.60"])


def test_a_budget_out_of_range_and_a_repeated_seed_are_refused(tmp_path):
    code, _, stderr = sweep_cli("--smoke", "--out", tmp_path, "--cells", f"{BUDGETED}@0.5")
    assert code == 2 and f"cell {BUDGETED}@0.5 seed 0" in stderr and "bits_per_weight" in stderr
    code, _, stderr = sweep_cli("--smoke", "--out", tmp_path, "--seeds", "0", "0")
    assert code == 2 and "twice" in stderr
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("flags, named", [
    (["--method", "apb"], "--method"), (["--bits-per-weight=1.6"], "--bits-per-weight"), (["--seed", "1"], "--seed"),
    (["--out", "elsewhere"], "--out"), (["--resume"], "--resume"), (["--overwrite"], "--overwrite"),
    (["--epochs", "2", "--meth", "bnn"], "--method"),  # an abbreviation is the same flag
    (["--fp-fraction", "0.1"], "--fp-fraction"),
    (["--ec", "0.1"], "--ec"),  # a method's own option goes with its cells (sbnn:ec=0.1)
])
def test_recipe_flags_the_sweep_sets_are_refused(tmp_path, flags, named):
    code, _, stderr = sweep_cli("--smoke", "--out", tmp_path, "--cells", "fp", "--", *flags)
    assert code == 2 and f"may not give {named} " in stderr, stderr
    assert not any(tmp_path.iterdir())


def test_a_recipe_flag_train_does_not_know_is_one_error_line(tmp_path):
    code, _, stderr = sweep_cli("--out", tmp_path, "--cells", "fp", "--", "--epochs", "many")
    assert code == 2 and "--epochs" in stderr and len(stderr.splitlines()) == 1


def _group(method, budget, bits, accuracy, std):
    return {"cell": method if budget is None else f"{method}@{budget}", "method": method, "budget": budget,
            "seeds": [0, 1], "test_accuracy_mean": accuracy, "test_accuracy_std": std, "bits_per_weight_mean": bits,
            "packed_bytes_mean": 1000.0}


def test_the_plot_draws_full_precision_flat_and_each_method_by_bits():
    report = {"recipe": {"model": "resnet20", "dataset": "fashion-mnist", "epochs": 2, "act_bits": 32},
              "seeds": [0, 1], "groups": [
                  _group("fp", None, 32.0, 0.91, 0.002), _group("apb", 1.6, 1.6, 0.90, 0.003),
                  _group("apb", 1.2, 1.2, 0.88, 0.004), _group("bnn", None, 1.0, 0.87, 0.001)]}
    fig = tradeoff_figure(report)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_xlabel() and ax.get_ylabel() == "test accuracy (%)"
    assert "resnet20 on fashion-mnist, 2 epochs" in fig.get_suptitle()
    fp_line = next(line for line in ax.get_lines() if line.get_label() == "fp (32 bits/weight)")
    assert list(fp_line.get_ydata()) == [pytest.approx(91.0)] * 2  # flat, not a point at x = 32
    methods = {c.get_label(): c for c in ax.containers}  # one errorbar line per compressed method
    assert sorted(methods) == ["apb", "bnn"]
    apb_x, apb_y = methods["apb"].lines[0].get_data()
    assert [round(x, 1) for x in apb_x] == [1.2, 1.6] and list(apb_y) == pytest.approx([88.0, 90.0])
    assert max(ax.get_xlim()) < 4  # the axis is not stretched to 32 bits/weight
    assert {t.get_text() for t in ax.texts} >= {"1-bit", "2-bit"}
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["fp (32 bits/weight)", "apb", "bnn"]


def test_a_cell_takes_its_methods_own_options_in_one_canonical_form():
    cell = parse_cell("sbnn:gamma=0.04:ec=0.1")
    assert cell == Cell("sbnn", None, (("ec", 0.1), ("gamma", 0.04)))  # the Options fields' order
    assert cell.label == "sbnn:ec=0.1:gamma=0.04" and cell.run_dir(0) == "sbnn-ec=0.1-gamma=0.04-s0"
    assert parse_cell("sbnn:sbnn-init=closed_form:ec=0.5") == Cell("sbnn", None, (("sbnn_init", "closed_form"),))
    assert parse_cell(f"{BUDGETED}@1.6") == Cell(BUDGETED, 1.6)
    with pytest.raises(ValueError, match="twice"):
        parse_cells(["sbnn:ec=0.1 sbnn:ec=0.10"])


@pytest.mark.parametrize("text, message", [
    ("sbnn:lr_ab=0.1", "'lr_ab' is no option of 'sbnn' \\(its options: ec, gamma"),
    ("sbnn:ec=high", "option ec takes a float, got 'high'"),
    ("sbnn:ec", "name=value"),
    ("sbnn:ec=0.1:ec=0.2", "option ec is given twice"),
])
def test_a_malformed_cell_option_is_named(text, message):
    with pytest.raises(ValueError, match=message) as e:
        parse_cell(text)
    assert repr(text) in str(e.value)


def test_option_cells_train_in_their_own_directories_and_read_back(tmp_path, monkeypatch):
    out = tmp_path / "sbnn"
    code, stdout, stderr = sweep_cli("--smoke", "--out", out, "--cells", "sbnn:ec=0.1:gamma=0.04:sbnn_ste=identity",
                                     "sbnn", "--quiet")
    assert code == 0, stderr
    names = ["sbnn-ec=0.1-gamma=0.04-sbnn_ste=identity-s0", "sbnn-s0"]
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(names)
    report = json.loads((out / "sweep.json").read_text())
    assert [r["options"] for r in report["rows"]] == [{"ec": 0.1, "gamma": 0.04, "sbnn_ste": "identity"}, {}]
    assert json.loads((out / names[0] / "summary.json").read_text())["config"]["ec"] == 0.1
    monkeypatch.setattr(Trainer, "run", never_train)
    code, _, stderr = sweep_cli("--report-only", "--out", out)
    assert code == 0, stderr
    by_cell = lambda rows: sorted(rows, key=lambda r: r["cell"])  # noqa: E731  (read back in name order)
    assert by_cell(json.loads((out / "sweep.json").read_text())["rows"]) == by_cell(report["rows"])


def test_merge_adds_the_rows_of_a_study_with_the_same_recipe(smoke, tmp_path):
    study, _ = smoke
    study_rows = json.loads((study / "sweep.json").read_text())["rows"]
    out = tmp_path / "more"
    code, stdout, stderr = sweep_cli("--smoke", "--out", out, "--cells", "sbnn:ec=0.2:gamma=0.05", "--quiet",
                                     "--merge", study / "sweep.json")
    assert code == 0, stderr
    report = json.loads((out / "sweep.json").read_text())
    assert [r["cell"] for r in report["rows"]] == ["sbnn:ec=0.2:gamma=0.05"] + [r["cell"] for r in study_rows]
    assert report["merged"] == [str(study / "sweep.json")] and len(report["groups"]) == len(study_rows) + 1
    assert all(r["source"] == str(study / "sweep.json") for r in report["rows"][1:])
    assert "sbnn:ec=0.2:gamma=0.05" in stdout and stdout.count("\nfp ") == 1
    # the same cell twice, or another recipe: refused, and the report is left as it was
    before = snapshot(out)
    code, _, stderr = sweep_cli("--report-only", "--out", out, "--merge", out / "sweep.json")
    assert code == 2 and "is in" in stderr
    other = tmp_path / "other"
    assert sweep_cli("--smoke", "--out", other, "--cells", "fp", "--quiet", "--", "--lr", "0.01")[0] == 0
    code, _, stderr = sweep_cli("--report-only", "--out", out, "--merge", other / "sweep.json")
    assert code == 2 and "another recipe" in stderr and "lr 0.005 -> 0.01" in stderr
    (tmp_path / "bad.json").write_text("{}")
    code, _, stderr = sweep_cli("--report-only", "--out", out, "--merge", tmp_path / "bad.json")
    assert code == 2 and "no sweep report" in stderr
    assert snapshot(out) == before


def test_the_plot_places_methods_by_what_the_packed_file_stores():
    groups = [_group("fp", None, 32.0, 0.91, None), _group("bnn", None, 1.0, 0.87, None),
              {**_group("sbnn", None, 1.0, 0.86, None), "cell": "sbnn:ec=0.1"}]
    for g, stored in zip(groups, (None, 1.13, 0.52)):
        g["packed_bits_per_weight_mean"] = stored
    report = {"recipe": {"model": "resnet20", "dataset": "fashion-mnist", "epochs": 2}, "seeds": [0],
              "groups": groups}
    ax = tradeoff_figure(report).axes[0]
    assert "packed file stores" in ax.get_xlabel()
    xs = {c.get_label(): c.lines[0].get_xdata()[0] for c in ax.containers}
    assert xs["sbnn"] == pytest.approx(0.52, rel=0.01) and xs["bnn"] == pytest.approx(1.13, rel=0.01)
    groups[1]["packed_bits_per_weight_mean"] = None  # one compressed cell without a file: the formula for all
    assert "formula" in tradeoff_figure(report).axes[0].get_xlabel()
