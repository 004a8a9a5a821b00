"""The trade-off study (`apb-ref sweep`): test accuracy against weight memory over a grid of
methods × budgets × seeds, resumable.

A grid is a list of cells, each `method` or `method@budget` (a memory budget in bits/weight, for the
methods that take one: `METHODS[name].budgeted`), optionally followed by the method's own options
(`sbnn:ec=0.1:gamma=0.04`), times a list of seeds. Every cell × seed is an ordinary training run of
one common recipe (a TrainConfig; the cell sets its method, bits_per_weight, options and seed),
trained in-process by the Trainer in its own directory `DIR/<method>[-b<budget>][-<option>=<value>...]-s<seed>`
(`apb-b1.6-s0`, `fp-s0`, `sbnn-ec=0.1-gamma=0.04-s0`; method options at their defaults are left out of
the name), so every other `apb-ref` command works on it. The data set is loaded once.

Before anything is trained, every run's directory is inspected:

- absent or empty: the run is trained;
- `summary.json` of the same config: the run is done and only read back;
- `last.ckpt` of the same config and no summary (an interrupted run): it is resumed exactly;
- anything else (a run of another config, files the sweep cannot account for): the sweep stops with
  an error naming the directory (and the differing options); nothing is deleted or replaced.

So the same command, run again after an interruption, continues where it stopped, and a finished
sweep re-runs in seconds, only rebuilding its report. "Same config" compares
`TrainConfig.from_dict(saved)` with the run's config, so options added since a run was saved take
their defaults instead of making the run look foreign.

The report: `DIR/sweep.json` (the recipe, the machine, one row per run, the mean and standard
deviation over seeds per cell) and `DIR/tradeoff.png` (test accuracy against bits/weight of the
compressed layers, as the packed file stores them), both written atomically. `report_only` rebuilds
them from the finished runs in a directory without training; `--merge` adds the rows of other reports
of the same recipe (new cells beside an earlier study whose run directories live elsewhere).
"""
from __future__ import annotations

import io
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from . import __version__
from .data import Dataset
from .fileio import atomic_write_bytes, atomic_write_text
from .packed import packed_memory
from .quant import METHODS
from .training import TrainConfig, Trainer, TrainingDiverged, checkpoint, export_args, load_model, load_run_data
from .training.loop import LAST, RUN_FILES, SUMMARY, foreign_entries
from .training.figures import run_figures
from .training.plots import DPI
from .training.summary import summarize

SWEEP_JSON, TRADEOFF_PNG = "sweep.json", "tradeoff.png"
# The options each cell sets; the common recipe leaves them at their defaults.
CELL_OPTIONS = ("method", "bits_per_weight", "seed")
# --smoke: a grid that runs in well under a minute on the bundled digits
SMOKE_RECIPE = dict(model="digits_cnn", dataset="digits", epochs=1, batch_size=16, optimizer="adam", lr=0.005,
                    weight_decay=0.0, limit_train=500, limit_test=300)
SMOKE_BUDGET = 1.5
FULL_PRECISION_BITS = 32.0

Log = Callable[[str], None]


def _print(line: str) -> None:
    print(line, flush=True)


# --- the grid ------------------------------------------------------------------------------------

def _number(value: float) -> str:
    """The shortest text of a budget that reads back as the same float: 1.6, 2, 1.25."""
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


@dataclass(frozen=True)
class Cell:
    """One point of the grid: a method, its budget in bits/weight (for a method that takes one) and its
    own options that differ from their defaults, in the order of the method's Options fields."""
    method: str
    budget: float | None = None
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def label(self) -> str:
        head = self.method if self.budget is None else f"{self.method}@{_number(self.budget)}"
        return head + "".join(f":{name}={_value_text(value)}" for name, value in self.options)

    def run_dir(self, seed: int) -> str:
        budget = "" if self.budget is None else f"-b{_number(self.budget)}"
        options = "".join(f"-{name}={_value_text(value)}" for name, value in self.options)
        return f"{self.method}{budget}{options}-s{seed}"


def _value_text(value: Any) -> str:
    return _number(value) if isinstance(value, float) else str(value)


def method_options(method: str) -> dict[str, Any]:
    """A method's own options and their defaults, in field order."""
    return {f.name: f.default for f in fields(METHODS[method].Options)}


def _option_value(text: str, default: Any, cell: str, name: str) -> Any:
    """A cell option's text as the type of its default (bool, int, float or str)."""
    try:
        if isinstance(default, bool):
            if text.lower() not in ("true", "false"):
                raise ValueError
            return text.lower() == "true"
        return type(default)(text)
    except ValueError:
        raise ValueError(f"sweep: cell {cell!r}: option {name} takes a {type(default).__name__}, got {text!r}") \
            from None


def _cell_options(text: str, method: str, assignments: list[str]) -> tuple[tuple[str, Any], ...]:
    """`name=value` words as the cell's options: known to the method, each once, defaults dropped."""
    own = method_options(method)
    given: dict[str, Any] = {}
    for word in assignments:
        name, eq, value = word.partition("=")
        name = name.replace("-", "_")
        if not eq or not value:
            raise ValueError(f"sweep: cell {text!r}: write each option as name=value, got {word!r}")
        if name not in own:
            raise ValueError(f"sweep: cell {text!r}: {name!r} is no option of {method!r} "
                             f"(its options: {', '.join(own) or 'none'})")
        if name in given:
            raise ValueError(f"sweep: cell {text!r}: option {name} is given twice")
        given[name] = _option_value(value, own[name], text, name)
    return tuple((name, given[name]) for name in own if name in given and given[name] != own[name])


def parse_cell(text: str) -> Cell:
    """`method[@budget][:name=value...]` (`apb@1.6`, `sbnn:ec=0.1:gamma=0.04`); a ValueError naming the
    cell for an unknown method, a budget given to a method that takes none, a budget that is not a
    number, or an option the method does not have."""
    head, *assignments = text.split(":")
    name, at, budget_text = head.partition("@")
    if name not in METHODS:
        raise ValueError(f"sweep: cell {text!r}: unknown method {name!r}; choose from {', '.join(METHODS)}")
    options = _cell_options(text, name, assignments)
    if not at:
        return Cell(name, None, options)
    if not METHODS[name].budgeted:
        takers = ", ".join(n for n, m in METHODS.items() if m.budgeted) or "none"
        raise ValueError(f"sweep: cell {text!r}: method {name!r} takes no bits/weight budget (methods that do: "
                         f"{takers}); write the cell without '@{budget_text}'")
    try:
        budget = float(budget_text)
    except ValueError:
        raise ValueError(f"sweep: cell {text!r}: the budget after '@' must be a number of bits/weight, "
                         f"got {budget_text!r}") from None
    return Cell(name, budget, options)


def cell_of(config: TrainConfig) -> Cell:
    """The cell a run's config belongs to: its method, budget and method options off their defaults."""
    own = method_options(config.method)
    options = tuple((name, getattr(config, name)) for name, default in own.items()
                    if getattr(config, name) != default)
    return Cell(config.method, config.bits_per_weight, options)


def parse_cells(texts: Iterable[str]) -> list[Cell]:
    """Cells from words separated by spaces or commas (`["fp bnn", "apb@1.6"]`); each cell once."""
    words = [w for text in texts for w in text.replace(",", " ").split()]
    if not words:
        raise ValueError("sweep: --cells is empty; give cells such as \"fp bnn apb@1.6\"")
    cells: list[Cell] = []
    for word in words:
        cell = parse_cell(word)
        if cell in cells:
            raise ValueError(f"sweep: cell {cell.label} is given twice in --cells")
        cells.append(cell)
    return cells


def smoke_cells() -> list[Cell]:
    """Every registered method once, budgeted ones at SMOKE_BUDGET: new methods join automatically."""
    return [Cell(name, SMOKE_BUDGET if cls.budgeted else None) for name, cls in METHODS.items()]


@dataclass(frozen=True)
class Run:
    """One training run of the sweep: a cell with one seed, its full config and its directory."""
    cell: Cell
    seed: int
    config: TrainConfig
    out: Path

    @property
    def name(self) -> str:
        return f"{self.cell.label} seed {self.seed}"


def cell_config(recipe: TrainConfig, cell: Cell, seed: int) -> TrainConfig:
    """The recipe with the cell's method, budget, options and seed; a ValueError naming the cell if invalid."""
    try:
        return replace(recipe, method=cell.method, bits_per_weight=cell.budget, seed=seed,
                       **dict(cell.options)).validate()
    except ValueError as e:
        raise ValueError(f"sweep: cell {cell.label} seed {seed}: {e}") from None


def plan(cells: list[Cell], seeds: list[int], recipe: TrainConfig, out_dir: Path) -> list[Run]:
    """Every cell × seed, cell by cell; all configs checked before anything runs."""
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"sweep: --seeds lists a seed twice: {seeds}")
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"sweep: --out {out_dir} is a file, not a directory")
    runs = []
    for cell in cells:
        for seed in seeds:
            config = cell_config(recipe, cell, seed)
            runs.append(Run(cell, seed, config, out_dir / cell.run_dir(seed)))
    return runs


# --- what each run's directory asks for ----------------------------------------------------------

def read_summary(out: Path) -> dict[str, Any]:
    path = out / SUMMARY
    try:
        summary = json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"sweep: {path} is not valid JSON ({e}); move that directory away or choose "
                         "another --out") from None
    if not isinstance(summary, dict) or not isinstance(summary.get("config"), dict):
        raise ValueError(f"sweep: {path} is not a run summary (no config object)")
    return summary


def config_diff(saved: TrainConfig, wanted: TrainConfig) -> str:
    """`lr 0.05 -> 0.01, epochs 1 -> 2` for the options that differ."""
    return ", ".join(f"{f.name} {getattr(saved, f.name)!r} -> {getattr(wanted, f.name)!r}"
                     for f in fields(saved) if getattr(saved, f.name) != getattr(wanted, f.name))


def _saved_config(path: Path, saved: Any, out: Path) -> TrainConfig:
    try:
        return TrainConfig.from_dict(saved)
    except (ValueError, TypeError) as e:
        raise ValueError(f"sweep: {out} holds a run whose config cannot be read ({path.name}: {e}); nothing "
                         "was changed: move that directory away or choose another --out") from None


def _check_same_config(path: Path, saved: Any, run: Run) -> None:
    saved_config = _saved_config(path, saved, run.out)
    if saved_config != run.config:
        raise ValueError(f"sweep: {run.out} holds a run of other options than cell {run.name} (saved -> this "
                         f"sweep: {config_diff(saved_config, run.config)}); nothing was changed: move that "
                         "directory away or choose another --out")


def inspect(run: Run) -> tuple[str, int]:
    """What the run's directory asks for: ("train", 0), ("resume", epochs completed) or ("done",
    epochs). Refuses, naming the directory, whatever the sweep must leave alone."""
    out = run.out
    if not out.exists():
        return "train", 0
    if not out.is_dir():
        raise FileExistsError(f"sweep: {out} is a file, not a run directory; move it away or choose another --out")
    if (out / SUMMARY).exists():
        summary = read_summary(out)
        _check_same_config(out / SUMMARY, summary["config"], run)
        return "done", int(summary.get("epochs", run.config.epochs))
    if (out / LAST).exists():
        state = checkpoint.load(out / LAST)
        _check_same_config(out / LAST, state["config"], run)
        return "resume", int(state["epoch"])
    held = [name for name in RUN_FILES if (out / name).exists()] + foreign_entries(out)
    if held:  # not a run the sweep can finish or resume, and not its own to remove
        shown = ", ".join(held[:5]) + (", ..." if len(held) > 5 else "")
        raise FileExistsError(f"sweep: {out} holds {shown} but no summary.json or last.ckpt: it is no run of cell "
                              f"{run.name} to finish or resume; nothing was changed: move it away or choose "
                              "another --out")
    return "train", 0  # empty, or only temporary files of an interrupted write (the Trainer removes those)


# --- running -------------------------------------------------------------------------------------

def load_recipe_data(recipe: TrainConfig) -> Dataset:
    """The data set every run shares (the cells change neither the data nor its limits)."""
    return load_run_data(recipe)


def train_run(run: Run, data: Dataset, resume: bool, progress: bool, figures: bool) -> None:
    trainer = Trainer(run.config, run.out, data=data, progress=progress)
    try:
        summary = trainer.run(resume=resume)
    except TrainingDiverged as e:
        raise TrainingDiverged(f"cell {run.name} ({run.out}): {e}") from None
    if figures:
        run_figures(run.out, summary, trainer.model)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def result_text(summary: dict[str, Any]) -> str:
    return f"{100 * summary['test_accuracy']:.2f} % at {summary['bits_per_weight']:.3f} bits/w"


def run_sweep(cells: list[Cell], seeds: list[int], recipe: TrainConfig, out_dir: str | Path,
              progress: bool = True, log: Log = _print, run_figures: bool = True,
              merge: Iterable[str | Path] = ()) -> dict[str, Any]:
    """Train (or resume, or read back) every cell × seed of the grid, then write sweep.json and
    tradeoff.png into `out_dir`; returns the report. `run_figures`: each trained run also gets the
    curves.png (and band.png) of `apb-ref train`; on a tiny grid drawing them takes longer than training.
    `merge`: other sweep reports of the same recipe whose rows join the report (`merge_reports`)."""
    out_dir = Path(out_dir)
    merge = list(merge)
    for path in merge:  # a bad report is refused before anything trains
        read_report(path)
    runs = plan(cells, seeds, recipe, out_dir)
    actions = [inspect(run) for run in runs]  # every refusal comes before any training
    counts = {a: sum(1 for action, _ in actions if action == a) for a in ("done", "resume", "train")}
    log(f"sweep into {out_dir}: {_count(len(cells), 'cell')} x {_count(len(seeds), 'seed')} = "
        f"{_count(len(runs), 'run')} ({counts['done']} done, {counts['resume']} to resume, {counts['train']} to train)")
    data = load_recipe_data(recipe)
    for i, (run, (action, epoch)) in enumerate(zip(runs, actions), 1):
        head = f"[{i}/{len(runs)}] {run.name}"
        if action == "done":
            log(f"{head}: done (cached) {result_text(read_summary(run.out))}")
            continue
        log(f"{head}: " + ("running" if action == "train" else f"resuming from epoch {epoch}/{run.config.epochs}"))
        start = time.perf_counter()
        train_run(run, data, resume=action == "resume", progress=progress, figures=run_figures)
        log(f"{head}: done {result_text(read_summary(run.out))} ({time.perf_counter() - start:.1f} s)")
    report = merge_reports(build_report(runs, recipe, data), merge)
    write_report(report, out_dir)
    return report


# --- the report ----------------------------------------------------------------------------------

def packed_figures(ckpt: Path, data: Dataset) -> dict[str, Any]:
    """Bytes of the packed file the final model (last.ckpt, the model summary.json measured) exports
    to, and what it stores per compressed weight; None without a checkpoint or when the model cannot
    be exported."""
    none = {"packed_bytes": None, "packed_bits_per_weight": None}
    if not ckpt.exists():
        return none
    model, config, _ = load_model(ckpt, data)
    try:
        s = summarize(model, data.image_shape, **packed_memory(model, *export_args(config, data)))
    except (ValueError, NotImplementedError) as e:  # one unexportable run must not lose the whole report
        print(f"sweep: no packed size for {ckpt}: {e}", file=sys.stderr)
        return none
    return {"packed_bytes": s.packed_bytes, "packed_bits_per_weight": s.packed_bits_per_weight}


def result_row(run: Run, data: Dataset) -> dict[str, Any]:
    """One run's results, read from its directory (so a cached run gives the same row as a fresh one)."""
    s = read_summary(run.out)
    return {"cell": run.cell.label, "method": run.cell.method, "budget": run.cell.budget,
            "options": dict(run.cell.options), "seed": run.seed,
            "run_dir": run.out.name, "epochs": s["epochs"], "test_accuracy": s["test_accuracy"],
            "best_test_accuracy": s["best_test_accuracy"], "bits_per_weight": s["bits_per_weight"],
            "fp_fraction": s["fp_fraction"], "model_bits": s["model_bits"],
            **packed_figures(run.out / LAST, data),
            # wall time of the run's last invocation; train_seconds adds up over resumes
            "wall_seconds": s["wall_seconds"], "train_seconds": s.get("train_seconds")}


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.fmean(known) if known else None


def group_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per cell: the mean and sample standard deviation (None for one seed) over seeds."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["cell"], []).append(row)
    out = []
    for cell, members in groups.items():
        accuracy = [r["test_accuracy"] for r in members]
        first = members[0]
        out.append({"cell": cell, "method": first["method"], "budget": first["budget"],
                    "options": first.get("options", {}),
                    "seeds": [r["seed"] for r in members],
                    "test_accuracy_mean": statistics.fmean(accuracy),
                    "test_accuracy_std": statistics.stdev(accuracy) if len(accuracy) > 1 else None,
                    "bits_per_weight_mean": statistics.fmean(r["bits_per_weight"] for r in members),
                    "packed_bytes_mean": _mean([r["packed_bytes"] for r in members]),
                    "packed_bits_per_weight_mean": _mean([r.get("packed_bits_per_weight") for r in members])})
    return out


def cpu_name() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "numpy": np.__version__}


def recipe_dict(recipe: TrainConfig) -> dict[str, Any]:
    """The common recipe: every option but the ones each cell sets."""
    return {k: v for k, v in asdict(recipe).items() if k not in CELL_OPTIONS}


def build_report(runs: list[Run], recipe: TrainConfig, data: Dataset) -> dict[str, Any]:
    rows = [result_row(run, data) for run in runs]
    return {"format": "apb-ref sweep", "apb_ref_version": __version__, "recipe": recipe_dict(recipe),
            "cells": list(dict.fromkeys(run.cell.label for run in runs)),
            "seeds": list(dict.fromkeys(run.seed for run in runs)),
            "machine": machine(), "rows": rows, "groups": group_rows(rows)}


def read_report(path: str | Path) -> dict[str, Any]:
    """A sweep.json, checked to be one: a ValueError naming the file otherwise."""
    path = Path(path)
    try:
        report = json.loads(path.read_text())
    except OSError as e:
        raise FileNotFoundError(f"sweep --merge: cannot read {path}: {e.strerror}") from None
    except ValueError as e:
        raise ValueError(f"sweep --merge: {path} is not valid JSON ({e})") from None
    if not isinstance(report, dict) or report.get("format") != "apb-ref sweep" \
            or not isinstance(report.get("recipe"), dict) or not isinstance(report.get("rows"), list):
        raise ValueError(f"sweep --merge: {path} is no sweep report (format 'apb-ref sweep' with recipe and rows)")
    return report


def merge_reports(report: dict[str, Any], paths: Iterable[str | Path]) -> dict[str, Any]:
    """`report` with the rows of other sweep reports trained with the same recipe (say, cells added to
    a study whose run directories live elsewhere); a cell × seed may appear once. The merged report
    names its sources; its groups are recomputed."""
    recipe = TrainConfig.from_dict(report["recipe"])
    rows = list(report["rows"])
    seen = {(r["cell"], r["seed"]) for r in rows}
    sources = []
    for path in paths:
        other = read_report(path)
        try:
            other_recipe = TrainConfig.from_dict(other["recipe"])
        except (ValueError, TypeError) as e:
            raise ValueError(f"sweep --merge: {path}: its recipe cannot be read ({e})") from None
        if other_recipe != recipe:
            raise ValueError(f"sweep --merge: {path} was trained with another recipe "
                             f"({config_diff(recipe, other_recipe)}); its accuracies are not comparable")
        for row in other["rows"]:
            key = (row.get("cell"), row.get("seed"))
            if key in seen:
                raise ValueError(f"sweep --merge: cell {key[0]} seed {key[1]} is in {path} and in another report")
            seen.add(key)
            rows.append({"options": {}, **row, "source": str(path)})
        sources.append(str(path))
    cells = list(dict.fromkeys(r["cell"] for r in rows))
    seeds = list(dict.fromkeys(r["seed"] for r in rows))
    return {**report, "cells": cells, "seeds": seeds, "rows": rows, "groups": group_rows(rows),
            "merged": report.get("merged", []) + sources}


def write_report(report: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    json_path = out_dir / SWEEP_JSON
    atomic_write_text(json_path, json.dumps(report, indent=2) + "\n")
    return json_path, tradeoff_plot(report, out_dir / TRADEOFF_PNG)


def tradeoff_table(report: dict[str, Any]) -> str:
    """Per cell: the cell, seeds, test accuracy (mean ± std), bits/weight by the paper's formula and as
    stored in the packed file, packed bytes."""
    width = max([22] + [len(g["cell"]) + 2 for g in report["groups"]])
    lines = [f"{'cell':<{width}}{'seeds':>5}{'test acc (%)':>18}{'bits/w':>9}{'file bits/w':>12}"
             f"{'packed bytes':>15}"]
    for g in report["groups"]:
        accuracy = f"{100 * g['test_accuracy_mean']:.2f}"
        if g["test_accuracy_std"] is not None:
            accuracy += f" ± {100 * g['test_accuracy_std']:.2f}"
        packed = "-" if g["packed_bytes_mean"] is None else f"{round(g['packed_bytes_mean']):,}"
        stored = g.get("packed_bits_per_weight_mean")
        stored = "-" if stored is None else f"{stored:.3f}"
        lines.append(f"{g['cell']:<{width}}{len(g['seeds']):>5}{accuracy:>18}"
                     f"{g['bits_per_weight_mean']:>9.3f}{stored:>12}{packed:>15}")
    return "\n".join(lines)


# --- the plot ------------------------------------------------------------------------------------

MARKERS = "osD^vP*Xph"
DODGE = 1.008  # x factor between neighbouring methods' points (log axis: the same few pixels everywhere)


def _title(report: dict[str, Any]) -> str:
    recipe, seeds = report["recipe"], report["seeds"]
    epochs = recipe["epochs"]
    first = f"test accuracy against weight memory: {recipe['model']} on {recipe['dataset']}, " \
            f"{epochs} epoch{'s' if epochs != 1 else ''}"
    if int(recipe.get("act_bits", 32)) < 32:
        first += f", {recipe['act_bits']}-bit activations"
    second = (f"mean over {len(seeds)} seeds, error bars ±1 std" if len(seeds) > 1 else f"seed {seeds[0]}")
    return f"{first}\n{second}"


def tradeoff_figure(report: dict[str, Any]):
    """The Figure of `tradeoff_plot`."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    fig = Figure(figsize=(8.0, 5.0), layout="constrained")
    ax = fig.subplots()
    by_method: dict[str, list[dict[str, Any]]] = {}
    for g in report["groups"]:
        by_method.setdefault(g["method"], []).append(g)
    xs, x_key = [], memory_axis(report)
    compressed_methods = [m for m, gs in by_method.items() if any(_is_compressed(g) for g in gs)]
    for i, (method, groups) in enumerate(by_method.items()):
        style = dict(color=f"C{i % 10}")
        for g in groups:
            if not _is_compressed(g):  # 32 bits/weight on the x axis would squash the rest
                _uncompressed_line(ax, g, style["color"])
        compressed = sorted(filter(_is_compressed, groups), key=lambda g: g[x_key])
        if not compressed:
            continue
        # methods at the same budget sit on the same x: shift each by a hair so their error bars show
        dodge = DODGE ** (compressed_methods.index(method) - (len(compressed_methods) - 1) / 2)
        x = [g[x_key] * dodge for g in compressed]
        y = [100 * g["test_accuracy_mean"] for g in compressed]
        err = [100 * (g["test_accuracy_std"] or 0.0) for g in compressed]
        ax.errorbar(x, y, yerr=err if any(err) else None, marker=MARKERS[i % len(MARKERS)], ms=7, capsize=3,
                    label=method, **style)
        xs += x
    lo, hi = min(xs + [1.0]) / 1.15, max(xs + [2.0]) * 1.15
    ax.set_xscale("log")
    ax.set_xlim(lo, hi)
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # 1.5, not 1.5×10⁰
    ax.xaxis.set_minor_formatter(NullFormatter())
    for bits, text in ((1.0, "1-bit"), (2.0, "2-bit")):
        ax.axvline(bits, color="0.45", ls="--", lw=0.9)
        ax.annotate(text, xy=(bits, 1.0), xycoords=("data", "axes fraction"), xytext=(3, -4),
                    textcoords="offset points", ha="left", va="top", fontsize=8, color="0.35")
    ax.set_xlabel(("bits/weight the packed file stores" if x_key == FILE_BITS else "bits/weight by the paper's "
                   "formula") + " for the compressed layers (log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=9, title="method", title_fontsize=9)
    fig.suptitle(_title(report), fontsize=11)
    return fig


FILE_BITS = "packed_bits_per_weight_mean"


def memory_axis(report: dict[str, Any]) -> str:
    """The x of the plot: what the packed file stores per compressed weight, the one measure every method
    shares (SBNN's entropy-coded weights are 1 bit/weight by the formula); the paper's formula when some
    compressed cell has no packed file."""
    compressed = [g for g in report["groups"] if _is_compressed(g)]
    return FILE_BITS if all(g.get(FILE_BITS) is not None for g in compressed) else "bits_per_weight_mean"


def _is_compressed(group: dict[str, Any]) -> bool:
    return group["bits_per_weight_mean"] < FULL_PRECISION_BITS - 1e-6


def _uncompressed_line(ax, group: dict[str, Any], color: str) -> None:
    """A method at 32 bits/weight (full precision) as a horizontal line, ±1 std shaded."""
    y = 100 * group["test_accuracy_mean"]
    label = f"{group['method']} ({group['bits_per_weight_mean']:.0f} bits/weight)"
    ax.axhline(y, color=color, lw=1.6, label=label)
    if group["test_accuracy_std"]:
        std = 100 * group["test_accuracy_std"]
        ax.axhspan(y - std, y + std, color=color, alpha=0.12, lw=0)


def tradeoff_plot(report: dict[str, Any], out_png: str | Path) -> Path:
    """Test accuracy (%) against bits/weight of the compressed layers, log x axis: one line with
    markers per method (cells sorted by bits/weight, mean over seeds with ±1 std error bars; neighbouring
    methods 0.8 % apart in x so points at one budget do not hide each other), uncompressed
    methods as horizontal lines, 1- and 2-bit marks. Written atomically."""
    buffer = io.BytesIO()
    tradeoff_figure(report).savefig(buffer, format="png", dpi=DPI)
    atomic_write_bytes(out_png, buffer.getvalue())
    return Path(out_png)


# --- rebuilding the report -----------------------------------------------------------------------

def finished_runs(out_dir: Path, log: Log = _print) -> list[Run]:
    """The finished runs in a sweep directory: subdirectories named as their cell, with summary.json."""
    if not out_dir.is_dir():
        raise FileNotFoundError(f"sweep --report-only: {out_dir} is not a directory")
    runs = []
    for d in sorted(p for p in out_dir.iterdir() if (p / SUMMARY).is_file()):
        config = _saved_config(d / SUMMARY, read_summary(d)["config"], d)
        cell = cell_of(config)
        if d.name != cell.run_dir(config.seed):
            log(f"skipped {d}: not named as a sweep cell ({cell.run_dir(config.seed)} for its config)")
            continue
        runs.append(Run(cell, config.seed, config, d))
    if not runs:
        raise FileNotFoundError(f"sweep --report-only: {out_dir} holds no finished cell (<cell>/summary.json)")
    order = list(METHODS)
    return sorted(runs, key=lambda r: (order.index(r.cell.method) if r.cell.method in order else len(order),
                                       r.cell.budget or 0.0, r.cell.label, r.seed))


def common_recipe(runs: list[Run]) -> TrainConfig:
    """The recipe every run shares (what the cells set, and every method's options, at their defaults);
    an error naming the first run trained with another one, since their accuracies would not be comparable."""
    per_cell = set(CELL_OPTIONS).union(*(method_options(m) for m in METHODS))
    defaults = {f.name: f.default for f in fields(TrainConfig) if f.name in per_cell}
    recipe = replace(runs[0].config, **defaults)
    for run in runs[1:]:
        other = replace(run.config, **defaults)
        if other != recipe:
            raise ValueError(f"sweep --report-only: {run.out} was trained with another recipe than "
                             f"{runs[0].out} ({config_diff(recipe, other)})")
    return recipe


def report_only(out_dir: str | Path, log: Log = _print, merge: Iterable[str | Path] = ()) -> dict[str, Any]:
    """Rebuild sweep.json and tradeoff.png from the finished runs in `out_dir`, training nothing;
    `merge`: other sweep reports of the same recipe whose rows join this one's (`merge_reports`)."""
    out_dir = Path(out_dir)
    runs = finished_runs(out_dir, log)
    recipe = common_recipe(runs)
    log(f"report of {_count(len(runs), 'finished run')} in {out_dir}")
    report = merge_reports(build_report(runs, recipe, load_recipe_data(recipe)), merge)
    write_report(report, out_dir)
    return report
