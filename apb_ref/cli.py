"""`apb-ref` command line: train, eval, export, summary, demo."""
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
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _config_from_args(args: argparse.Namespace):
    from .training import TrainConfig
    return TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})


def _finish_run(out: Path, summary: dict, quiet: bool, model=None, image_shape=None) -> None:
    from .training.plots import band_histogram, band_layers, training_curves
    png = training_curves(out / "metrics.jsonl", out / "curves.png", f"{summary['model']} on {summary['dataset']}")
    if model is not None and band_layers(model):
        band_histogram(model, out / "band.png")
    if not quiet and model is not None and summary.get("method") != "fp":
        from .training.summary import summarize
        print("\n" + summarize(model, image_shape).table())
    if not quiet:
        print(f"\ntest accuracy {100 * summary['test_accuracy']:.2f}% after {summary['epochs']} epochs | "
              f"{summary['images_per_second']:.0f} train img/s | wall {summary['wall_seconds']:.1f} s")
        print(f"run directory {out}: summary.json, metrics.jsonl, last.ckpt, best.ckpt, {png.name}")


def cmd_train(args: argparse.Namespace) -> int:
    from .training import Trainer
    config = _config_from_args(args)
    out = Path(args.out or f"runs/{config.model}-{config.dataset}-seed{config.seed}")
    trainer = Trainer(config, out, progress=not args.quiet, overwrite=args.overwrite)
    summary = trainer.run(resume=args.resume)
    _finish_run(out, summary, args.quiet, trainer.model, trainer.data.image_shape)
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from .packed import packed_size
    from .training import export_args, load_model
    from .training.summary import summarize
    model, config, data = load_model(args.checkpoint)
    s = summarize(model, data.image_shape, packed_bytes=packed_size(model, *export_args(config, data)))
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
    from .packed import export_model
    from .training import export_args, load_model
    from .training.summary import summarize
    if Path(args.output).is_dir():
        raise ValueError(f"export: -o {args.output} is a directory; give a file name, e.g. {Path(args.output) / 'model.apbz'}")
    model, config, data = load_model(args.checkpoint)
    nbytes = export_model(model, *export_args(config, data)).save(args.output)
    s = summarize(model, data.image_shape, packed_bytes=nbytes)
    print(f"wrote {args.output}: {nbytes:,} bytes (paper formula {s.model_bits / 8:,.0f} bytes, "
          f"float32 {s.float32_bits / 8:,.0f} bytes)")
    return 0


def cmd_eval_packed(args: argparse.Namespace) -> int:
    from . import kernels
    from .data import load_dataset
    from .packed import PackedNetwork
    if args.backend:
        kernels.set_backend(args.backend)
    net = PackedNetwork.load(args.packed)
    norm = net.header.get("normalization", {})
    name = args.dataset or norm.get("dataset")
    if not name:
        raise ValueError("eval --packed: the file names no dataset; pass --dataset")
    data = load_dataset(name, args.data_dir, args.pad_to if args.pad_to else _pad_for(norm))
    result = net.evaluate(data.x_test, data.y_test, args.batch_size)
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
    result = evaluate(model, data, args.batch_size)
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
    print(f"apb-ref {__version__} demo: {config.model} on {config.dataset}, {config.epochs} epochs, pure NumPy; "
          f"APB compresses the middle convs to {config.bits_per_weight} bits/weight (first conv and last linear stay float32)")
    trainer = Trainer(config, out, progress=not args.quiet, overwrite=overwrite)
    summary = trainer.run(resume=args.resume)
    _finish_run(out, summary, args.quiet, trainer.model, trainer.data.image_shape)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="apb-ref", description="Automatic Prune Binarization reference implementation")
    parser.add_argument("--version", action="version", version=f"apb-ref {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model and write a run directory")
    _add_train_options(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a checkpoint, or a packed model on the kernels, on a test set")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--packed", default=None, help="a packed model written by `apb-ref export`")
    p.add_argument("--backend", default=None, choices=["numpy", "rust"], help="kernel backend for --packed")
    p.add_argument("--dataset", default=None, help="evaluate on this dataset instead of the checkpoint's")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--pad-to", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--json", action="store_true", help="print a JSON report")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("bench", help="a short benchmark of the binary kernels against float32 matmul")
    p.add_argument("--repeats", type=int, default=5)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("export", help="write a trained checkpoint as a packed model (.apbz)")
    p.add_argument("checkpoint")
    p.add_argument("-o", "--output", required=True)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("summary", help="per-layer memory and MACs of a checkpoint (Larq-style table)")
    p.add_argument("checkpoint")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("demo", help="the main job: train APB on the bundled digits and report")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--bits-per-weight", type=float, default=1.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--overwrite", action="store_true",
                   help="run even if --out holds files the demo did not write (they are kept)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_demo)
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
        saved = " (completed epochs are saved: continue with --resume)" if command in ("train", "demo") else ""
        print(f"\napb-ref: interrupted{saved}", file=sys.stderr)
        return 130
    except RuntimeError as e:  # a diverged run (TrainingDiverged), a missing Rust backend
        print(f"apb-ref: {'training stopped' if type(e).__name__ == 'TrainingDiverged' else 'error'}: {e}", file=sys.stderr)
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
