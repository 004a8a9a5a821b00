"""`apb-ref` command line: train, eval, export, summary, demo, sweep."""
from __future__ import annotations

import argparse
import json
import sys
import time
import typing
from dataclasses import fields
from pathlib import Path

from . import __version__


def _flag_type(annotation):
    """The argparse type of a config field: its annotation without None (`int | None` -> int)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return args[0] if args else annotation


def _add_config_options(p: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field, generated from the field's type, default and metadata (help,
    choices); each method's options in its own group."""
    from .quant import METHODS
    from .training.config import TrainConfig, option_types
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f, annotation in zip(fields(TrainConfig), option_types().values()):
        group_name = f.metadata.get("group")
        target = p
        if group_name:
            title = "compression" if group_name == "compression" else f"{group_name} options ({METHODS[group_name].description})"
            target = groups.setdefault(group_name, p.add_argument_group(title))
        flag, typ = "--" + f.name.replace("_", "-"), _flag_type(annotation)
        help_text = f.metadata.get("help", "")
        if typ is bool:
            target.add_argument(flag, action="store_true", default=f.default, help=help_text)
            continue
        shown = f" (default: {f.default})" if f.default is not None else ""
        target.add_argument(flag, type=typ, default=f.default, choices=f.metadata.get("choices"),
                            help=help_text + shown)


def _add_train_options(p: argparse.ArgumentParser) -> None:
    _add_config_options(p)
    p.add_argument("--out", default=None, help="run directory (default runs/<model>-<dataset>-seed<seed>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a previous run's files in --out (files the run did not write are kept)")
    p.add_argument("--quiet", action="store_true", help="no progress or table: print only the final result line")
    p.add_argument("--backend", default=None, choices=["numpy", "rust"],
                   help="kernels of the training step: rust (the compiled extension) or numpy (the readable "
                        "reference); default: rust when built, else numpy, or APB_BACKEND. Not part of the "
                        "run's settings: a run may resume on the other backend")


def _config_from_args(args: argparse.Namespace):
    from .training import TrainConfig
    return TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})


class _RecipeParser(argparse.ArgumentParser):
    """The train command's flags, for a sweep's common recipe: a mistake raises (one error line from
    main) instead of printing this inner parser's usage and exiting."""

    def error(self, message: str):
        raise ValueError(f"sweep: recipe (the flags after --): {message}")


# Train flags a sweep sets itself (why a recipe may not give them).
_SWEEP_SETS = {"method": "set per cell by --cells", "bits_per_weight": "set per cell by --cells method@budget",
               "fp_fraction": "budgets are set per cell, in bits/weight, by --cells method@budget",
               "seed": "set per run by --seeds", "out": "each run's directory is named under the sweep's --out",
               "resume": "interrupted cells resume by themselves", "overwrite": "a sweep never replaces a run",
               "quiet": "give the sweep's own --quiet, before --",
               "backend": "the whole sweep runs on one backend: set APB_BACKEND=numpy|rust"}


def _recipe_parser(defaults: dict) -> argparse.ArgumentParser:
    p = _RecipeParser(prog="apb-ref sweep ... --", add_help=False)
    _add_train_options(p)
    p.set_defaults(**defaults)
    return p


def _recipe_config(argv: list[str], defaults: dict):
    """The sweep's common recipe from `apb-ref train` flags (the same parser); refuses the flags each
    cell sets. `defaults` replace the train defaults (the --smoke recipe) and flags still override them."""
    parser = _recipe_parser(defaults)
    # argparse fills in a default only where the namespace has no value yet: starting from a marker
    # everywhere, what is left unmarked was written (abbreviated flags too)
    unset = object()
    written = parser.parse_args(argv, argparse.Namespace(**{name: unset for name in vars(parser.parse_args([]))}))
    from .sweep import METHODS, method_options
    sets = {**_SWEEP_SETS, **{name: f"an option of {method}: give it per cell as {method}:{name}=VALUE"
                              for method in METHODS for name in method_options(method)}}
    refused = [name for name in sets if getattr(written, name) is not unset]
    if refused:
        raise ValueError("sweep: the recipe (the flags after --) may not give " + "; ".join(
            f"--{name.replace('_', '-')} ({sets[name]})" for name in refused))
    return _config_from_args(parser.parse_args(argv))


def _finish_run(out: Path, summary: dict, quiet: bool, model=None, image_shape=None) -> None:
    from .training.figures import run_figures
    from .training.plots import training_curves
    png = run_figures(out, summary, model) if model is not None else \
        training_curves(out / "metrics.jsonl", out / "curves.png", summary=summary)
    if not quiet and model is not None and summary.get("method") != "fp":
        from .training.summary import summarize
        print("\n" + summarize(model, image_shape).table())
    bits = f" | {summary['bits_per_weight']:.3f} bits/weight" if summary.get("method") != "fp" else ""
    # the one line --quiet still prints
    print(f"{'' if quiet else chr(10)}test accuracy {100 * summary['test_accuracy']:.2f}% after {summary['epochs']} "
          f"epochs{bits}{_best_text(summary)} | {summary['images_per_second']:.0f} train img/s | "
          f"wall {summary['wall_seconds']:.1f} s")
    if not quiet:
        print(f"run directory {out}: summary.json, metrics.jsonl, last.ckpt, best.ckpt, {png.name}")


def _best_text(summary: dict) -> str:
    """`; best.ckpt (epoch 3, chosen on validation 91.20%): test 90.85%`, or "" for a run without one."""
    if summary.get("best_epoch") is None or summary.get("best_test_accuracy") is None:
        return ""
    on = summary.get("best_selected_on", "test")
    chosen = f" {100 * summary['best_val_accuracy']:.2f}%" if on == "validation" else " set"
    return (f"; best.ckpt (epoch {summary['best_epoch']}, chosen on {on}{chosen}): "
            f"test {100 * summary['best_test_accuracy']:.2f}%")


def cmd_train(args: argparse.Namespace) -> int:
    from . import kernels
    from .training import Trainer
    if args.backend:
        kernels.set_backend(args.backend)
    config = _config_from_args(args)
    out = Path(args.out or f"runs/{config.model}-{config.dataset}-seed{config.seed}")
    trainer = Trainer(config, out, progress=not args.quiet, overwrite=args.overwrite)
    summary = trainer.run(resume=args.resume)
    _finish_run(out, summary, args.quiet, trainer.model, trainer.data.image_shape)
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from .packed import packed_memory
    from .training import export_args, load_model
    from .training.summary import summarize
    model, config, data = load_model(args.checkpoint)
    s = summarize(model, data.image_shape, **packed_memory(model, *export_args(config, data)))
    print(json.dumps(s.to_dict(), indent=2) if args.json else
          f"{config.model} ({config.method}, {config.act_bits}-bit activations) from {args.checkpoint}\n{s.table()}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import os
    import subprocess
    import sys
    blas_vars = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
    if any(os.environ.get(v) != "1" for v in blas_vars):
        # NumPy's BLAS reads its thread count once, at import: run again in a fresh process so the
        # float32 baseline really is one thread.
        env = dict(os.environ, **{v: "1" for v in blas_vars})
        return subprocess.call([sys.executable, "-m", "apb_ref", "bench", "--repeats", str(args.repeats)], env=env)
    from .bench import main as bench_main
    return bench_main(args.repeats)


def cmd_export(args: argparse.Namespace) -> int:
    from .packed import export_model, layer_bytes
    from .training import export_args, load_model
    from .training.summary import summarize
    if Path(args.output).is_dir():
        raise ValueError(f"export: -o {args.output} is a directory; give a file name, e.g. {Path(args.output) / 'model.apbz'}")
    model, config, data = load_model(args.checkpoint)
    packed = export_model(model, *export_args(config, data))
    nbytes = packed.save(args.output)
    s = summarize(model, data.image_shape, packed_bytes=nbytes, layer_bytes=layer_bytes(packed))
    print(f"wrote {args.output}: {nbytes:,} bytes (paper formula {s.model_bits / 8:,.0f} bytes, "
          f"float32 {s.float32_bits / 8:,.0f} bytes)")
    return 0


def cmd_eval_packed(args: argparse.Namespace) -> int:
    from . import kernels
    from .data import load_dataset
    from .packed import PackedNetwork
    if args.backend:
        kernels.set_backend(args.backend)
    from .packed.schema import data_settings
    net = PackedNetwork.load(args.packed)
    norm = data_settings(net.header, args.packed)
    name = args.dataset or norm.get("dataset")
    if not name:
        raise ValueError("eval --packed: the file names no dataset; pass --dataset")
    # The file remembers where the data was and how it was padded (files before that: guessed from
    # the image shape); the flags override.
    same_data = args.dataset is None or args.dataset == norm.get("dataset")
    data_dir = args.data_dir or (norm.get("data_dir") if same_data else None)
    pad_to = args.pad_to or (norm["pad_to"] if "pad_to" in norm else _pad_for(norm))
    if kernels.get_backend() == "numpy" and "rust" in kernels.available_backends():
        print("note: the NumPy kernels are the readable reference and run many times slower; "
              "--backend rust runs the compiled ones", file=sys.stderr)
    data = load_dataset(name, data_dir, pad_to)
    result = net.evaluate(data.x_test, data.y_test, args.batch_size, progress="eval")
    report = {"packed": str(args.packed), "dataset": data.name, "backend": kernels.get_backend(),
              "test_accuracy": result["accuracy"], "images": result["images"], "images_per_second": result["images_per_second"]}
    print(json.dumps(report, indent=2) if args.json else
          f"packed {args.packed} on {data.name} ({report['backend']} kernels): test accuracy "
          f"{100 * result['accuracy']:.2f}% over {result['images']} images, {result['images_per_second']:.0f} img/s")
    return 0


def _pad_for(norm: dict) -> int | None:
    """Fashion-MNIST trained at 32×32 must be padded again at evaluation."""
    shape = norm.get("image_shape")
    return shape[-1] if shape and shape[-1] not in (8, 28) else None


def cmd_eval(args: argparse.Namespace) -> int:
    if args.packed:
        return cmd_eval_packed(args)
    if not args.checkpoint:
        raise ValueError("eval: give --checkpoint CKPT or --packed FILE")
    from .data import load_dataset
    from .training import evaluate, load_model
    data = None
    if args.dataset:
        data = load_dataset(args.dataset, args.data_dir, args.pad_to)
    model, config, data = load_model(args.checkpoint, data)
    start = time.perf_counter()
    result = evaluate(model, data, args.batch_size, progress="eval")
    seconds = time.perf_counter() - start
    report = {"checkpoint": str(args.checkpoint), "model": config.model, "dataset": data.name,
              "test_accuracy": result["accuracy"], "test_loss": result["loss"], "images": int(len(data.y_test)),
              "images_per_second": len(data.y_test) / seconds}
    print(json.dumps(report, indent=2) if args.json else
          f"{config.model} on {data.name}: test accuracy {100 * result['accuracy']:.2f}% "
          f"(loss {result['loss']:.4f}) over {len(data.y_test)} images, {report['images_per_second']:.0f} img/s")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job: a CNN trained in pure NumPy on the bundled digits, then a report."""
    from .training import TrainConfig, Trainer
    config = TrainConfig(model="digits_cnn", dataset="digits", epochs=args.epochs, batch_size=32, lr=0.05,
                         weight_decay=5e-4, seed=args.seed, method="apb", bits_per_weight=args.bits_per_weight)
    from .training.loop import foreign_entries
    out = Path(args.out)
    # The demo starts fresh each time: a directory holding only a run's files is reused (those files
    # replaced); one holding anything else is refused unless --overwrite, which still keeps the rest.
    overwrite = args.overwrite or not foreign_entries(out)
    if not args.quiet:
        print(f"apb-ref {__version__} demo: {config.model} on {config.dataset}, {config.epochs} epochs, pure NumPy; "
              f"APB compresses the middle convs to {config.bits_per_weight} bits/weight (first conv and last linear "
              "stay float32)")
    trainer = Trainer(config, out, progress=not args.quiet, overwrite=overwrite)
    summary = trainer.run(resume=args.resume)
    _finish_run(out, summary, args.quiet, trainer.model, trainer.data.image_shape)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from .sweep import (
        SMOKE_RECIPE, SWEEP_JSON, TRADEOFF_PNG, parse_cells, report_only, run_sweep, smoke_cells, tradeoff_table,
    )
    out = Path(args.out)
    if args.report_only:
        if args.cells or args.seeds or args.smoke or args.recipe:
            raise ValueError("sweep --report-only reads the finished cells in --out; it takes no --cells, --seeds, "
                             "--smoke or recipe flags")
        report = report_only(out, merge=args.merge or ())
    else:
        recipe = _recipe_config(args.recipe, SMOKE_RECIPE if args.smoke else {})
        if args.cells:
            cells = parse_cells(args.cells)
        elif args.smoke:
            cells = smoke_cells()
        else:
            raise ValueError('sweep: give --cells (e.g. --cells "fp bnn apb@1.6"), or --smoke')
        report = run_sweep(cells, args.seeds or [0], recipe, out, progress=not args.quiet, run_figures=not args.smoke,
                           merge=args.merge or ())
    print("\n" + tradeoff_table(report))
    print(f"wrote {out / SWEEP_JSON} and {out / TRADEOFF_PNG}")
    return 0


EXAMPLES = {
    "train": """examples:
  apb-ref train                                   # digits_cnn on the bundled digits, full precision (~15 s)
  apb-ref train --method apb --bits-per-weight 1.5 --out runs/apb-digits
  apb-ref train --model resnet20 --dataset fashion-mnist --pad-to 32 --epochs 2 --method apb \\
      --bits-per-weight 1.6 --optimizer adam --lr 0.005 --weight-decay 0 --out runs/apb   # 20-45 min on 2 cores
  apb-ref train ... --limit-train 2000 --limit-test 1000   # the same, a quick variant (~1 min)
  apb-ref train <the same options> --resume       # continue an interrupted run exactly""",
    "eval": """examples:
  apb-ref eval --checkpoint runs/apb/best.ckpt
  apb-ref eval --packed apb.apbz --backend rust   # dataset, directory and padding come from the file""",
    "export": """examples:
  apb-ref export runs/apb/best.ckpt -o apb.apbz""",
    "summary": """examples:
  apb-ref summary runs/apb/best.ckpt
  apb-ref summary runs/apb/best.ckpt --json""",
    "demo": """examples:
  apb-ref demo                                    # ~15 s on 2 cores; writes runs/demo
  apb-ref demo --bits-per-weight 1.2 --out runs/demo-1.2""",
    "bench": """examples:
  apb-ref bench --repeats 3""",
    "sweep": """examples:
  apb-ref sweep --smoke --out runs/sweep-smoke    # every method on the bundled digits, in under a minute
  apb-ref sweep --out runs/sweep --cells "fp bnn apb@1.2 apb@1.6" --seeds 0 1 -- --model resnet20 \\
      --dataset fashion-mnist --pad-to 32 --epochs 2 --optimizer adam --lr 0.005 --weight-decay 0
  apb-ref sweep <the same options>                # after an interruption: finished cells are read back,
                                                  # the interrupted one resumes exactly, the rest train
  apb-ref sweep --report-only --out runs/sweep    # rebuild sweep.json and tradeoff.png from finished cells
  apb-ref sweep --out runs/sbnn --cells "sbnn:ec=0.1:gamma=0.04 sbnn:ec=0.02:gamma=0.08" \
      --merge runs/sweep/sweep.json -- <the same recipe>   # a method's options per cell, beside an earlier study""",
}


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (argparse turns the ValueError into a usage line)."""
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


def _command(sub, name: str, help: str, func) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help, description=help, epilog=EXAMPLES.get(name),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(func=func)
    return p


def build_parser() -> argparse.ArgumentParser:
    from .data import DATASETS
    parser = argparse.ArgumentParser(
        prog="apb-ref", description="Automatic Prune Binarization (and BNN) reference implementation: train, "
        "export to a packed file, and run it on popcount kernels. `apb-ref COMMAND --help` for each command.")
    parser.add_argument("--version", action="version", version=f"apb-ref {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _command(sub, "train", "train a model and write a run directory", cmd_train)
    _add_train_options(p)

    p = _command(sub, "eval", "evaluate a checkpoint, or a packed model on the kernels, on a test set", cmd_eval)
    p.add_argument("--checkpoint", default=None, help="a checkpoint written by `apb-ref train` (.ckpt)")
    p.add_argument("--packed", default=None, help="a packed model written by `apb-ref export` (.apbz)")
    p.add_argument("--backend", default=None, choices=["numpy", "rust"],
                   help="kernels for --packed (default: rust when built, else numpy; or APB_BACKEND)")
    p.add_argument("--dataset", default=None, choices=sorted(DATASETS),
                   help="evaluate on this dataset (default: the one the model was trained on)")
    p.add_argument("--data-dir", default=None, help="directory of the dataset files (default: the training run's)")
    p.add_argument("--pad-to", type=positive_int, default=None,
                   help="zero-pad images to this size in pixels (default: as in training)")
    p.add_argument("--batch-size", type=positive_int, default=500, help="images per batch (default: 500)")
    p.add_argument("--json", action="store_true", help="print a JSON report")

    p = _command(sub, "bench", "a short benchmark of the binary kernels against float32 matmul", cmd_bench)
    p.add_argument("--repeats", type=positive_int, default=5, help="timed rounds per kernel (default: 5)")

    p = _command(sub, "export", "write a trained checkpoint as a packed model (.apbz)", cmd_export)
    p.add_argument("checkpoint", help="a checkpoint written by `apb-ref train` (.ckpt)")
    p.add_argument("-o", "--output", required=True, help="the packed file to write (.apbz); replaced if it exists")

    p = _command(sub, "summary", "per-layer memory and MACs of a checkpoint (Larq-style table)", cmd_summary)
    p.add_argument("checkpoint", help="a checkpoint written by `apb-ref train` (.ckpt)")
    p.add_argument("--json", action="store_true", help="print the table as JSON")

    p = _command(sub, "demo", "the main job: train APB on the bundled digits and report", cmd_demo)
    p.add_argument("--epochs", type=positive_int, default=12, help="training epochs (default: 12)")
    p.add_argument("--bits-per-weight", type=float, default=1.5,
                   help="memory budget of the compressed convs in bits/weight (default: 1.5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and the shuffling (default: 0)")
    p.add_argument("--out", default="runs/demo", help="run directory (default: runs/demo)")
    p.add_argument("--resume", action="store_true", help="continue the demo run in --out")
    p.add_argument("--overwrite", action="store_true",
                   help="run even if --out holds files the demo did not write (they are kept)")
    p.add_argument("--quiet", action="store_true", help="print only the final result line")

    p = _command(sub, "sweep", "a resumable trade-off study: every cell (method or method@budget) x seed trained "
                 "with one recipe, then accuracy against bits/weight (sweep.json, tradeoff.png)", cmd_sweep)
    p.add_argument("--out", required=True, help="sweep directory: one run directory per cell and seed "
                   "(<method>[-b<budget>][-<option>=<value>...]-s<seed>), sweep.json, tradeoff.png")
    p.add_argument("--cells", nargs="+", default=None, metavar="CELL",
                   help="cells, separated by spaces or commas: a method (fp, bnn) or method@bits-per-weight for a "
                   "method that takes a budget (apb@1.6), then the method's own options as :name=value "
                   "(sbnn:ec=0.1:gamma=0.04)")
    p.add_argument("--seeds", nargs="+", type=int, default=None, metavar="SEED",
                   help="seeds of every cell (default: 0)")
    p.add_argument("--smoke", action="store_true",
                   help="a tiny built-in recipe on the bundled digits (and, without --cells, every method once; "
                   "no per-run curves): under a minute")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: rebuild sweep.json and tradeoff.png from the finished cells in --out")
    p.add_argument("--merge", nargs="+", default=None, metavar="SWEEP_JSON",
                   help="also tabulate and plot the rows of these sweep.json reports (trained with the same recipe; "
                   "each cell x seed once), e.g. new cells beside an earlier study")
    p.add_argument("--quiet", action="store_true", help="no training progress: one line per cell and the table")
    p.add_argument("recipe", nargs="*", metavar="-- TRAIN_FLAGS",
                   help="after --: `apb-ref train` flags of the common recipe (all but --method, --bits-per-weight, "
                   "--seed, --out, --resume, --overwrite, --quiet, which the sweep sets)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command. Every expected failure ends as one line on stderr and a non-zero exit code:
    1 a diverged run, 2 a bad argument or file, 3 an operating-system or memory failure, 130 Ctrl-C."""
    command = None
    try:
        args = build_parser().parse_args(argv)
        command = args.command
        return args.func(args)
    except KeyboardInterrupt:
        hints = {"train": "completed epochs are saved: continue with --resume",
                 "demo": "completed epochs are saved: continue with --resume",
                 "sweep": "finished runs and completed epochs are saved: run the same sweep again to continue"}
        saved = f" ({hints[command]})" if command in hints else ""
        print(f"\napb-ref: interrupted{saved}", file=sys.stderr)
        return 130
    except RuntimeError as e:  # a diverged run, a missing Rust backend
        from .training import TrainingDiverged
        print(f"apb-ref: {'training stopped' if isinstance(e, TrainingDiverged) else 'error'}: {e}", file=sys.stderr)
        return 1
    except (ValueError, KeyError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError) as e:
        print(f"apb-ref: error: {e}", file=sys.stderr)
        return 2
    except MemoryError:
        print("apb-ref: error: out of memory (try a smaller --batch-size, --limit-train or model)", file=sys.stderr)
        return 3
    except OSError as e:
        print(f"apb-ref: error: {e.strerror or e}{f': {e.filename}' if e.filename else ''}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
