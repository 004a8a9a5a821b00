"""`apb-ref` command line: train, eval, export, summary, demo."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from . import __version__


def _add_train_options(p: argparse.ArgumentParser) -> None:
    from .data import DATASETS
    from .models import MODELS
    p.add_argument("--model", default="digits_cnn", choices=sorted(MODELS))
    p.add_argument("--dataset", default="digits", choices=sorted(DATASETS))
    p.add_argument("--data-dir", default=None, help="directory of the dataset files (IDX or CIFAR-10 python batches)")
    p.add_argument("--pad-to", type=int, default=None, help="zero-pad images to this size (e.g. 32 for Fashion-MNIST + ResNet-20)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--optimizer", default="sgd", choices=["sgd", "adam", "adamw"])
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--nesterov", action="store_true")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--schedule", default="cosine", choices=["cosine", "step", "constant"])
    p.add_argument("--warmup-epochs", type=int, default=0)
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--augment", default="auto", choices=["auto", "on", "off"])
    p.add_argument("--act", default="auto", choices=["auto", "relu", "hardtanh"],
                   help="activation function (auto: hardtanh with --act-bits 1, relu otherwise)")
    from .quant import METHODS
    g = p.add_argument_group("compression")
    g.add_argument("--method", default="fp", choices=sorted(METHODS))
    g.add_argument("--act-bits", type=int, default=32, choices=[32, 2, 1], help="bits of the activations into compressed layers")
    g.add_argument("--act-ste", default="identity", choices=["identity", "clipped"], help="straight-through estimator of 1-bit activations")
    g.add_argument("--alpha-delta", default="learned", choices=["learned", "fixed"], help="APB: learn α, δ (paper) or keep them at init (released code)")
    g.add_argument("--lr-ab", type=float, default=0.01, help="APB: Adam learning rate of α and δ")
    g.add_argument("--ab-reduction", default="mean", choices=["mean", "sum"], help="APB: α/δ gradients as layer means (released code) or sums")
    g.add_argument("--freeze-alpha-delta-epoch", type=int, default=None)
    g.add_argument("--freeze-mask-epoch", type=int, default=None)
    budget = g.add_mutually_exclusive_group()
    budget.add_argument("--bits-per-weight", type=float, default=None, help="APB memory budget of the compressed layers")
    budget.add_argument("--fp-fraction", type=float, default=None, help="APB budget as a full-precision fraction")
    g.add_argument("--budget-weight", type=float, default=1.0, help="λ of the smooth budget penalty")
    g.add_argument("--budget-epoch", type=int, default=None, help="epoch of the hard budget projection (default: the last)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit-train", type=int, default=None, help="use only the first N training images (quick runs)")
    p.add_argument("--limit-test", type=int, default=None)
    p.add_argument("--out", default=None, help="run directory (default runs/<model>-<dataset>-seed<seed>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _config_from_args(args: argparse.Namespace):
    from .train import TrainConfig
    return TrainConfig(model=args.model, dataset=args.dataset, data_dir=args.data_dir, pad_to=args.pad_to,
                       epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer,
                       momentum=args.momentum, nesterov=args.nesterov, weight_decay=args.weight_decay,
                       schedule=args.schedule, warmup_epochs=args.warmup_epochs, label_smoothing=args.label_smoothing,
                       augment=args.augment, act=args.act, seed=args.seed,
                       limit_train=args.limit_train, limit_test=args.limit_test,
                       method=args.method, act_bits=args.act_bits, act_ste=args.act_ste, alpha_delta=args.alpha_delta,
                       lr_ab=args.lr_ab, ab_reduction=args.ab_reduction, freeze_alpha_delta_epoch=args.freeze_alpha_delta_epoch,
                       freeze_mask_epoch=args.freeze_mask_epoch, bits_per_weight=args.bits_per_weight,
                       fp_fraction=args.fp_fraction, budget_weight=args.budget_weight, budget_epoch=args.budget_epoch)


def _finish_run(out: Path, summary: dict, quiet: bool, model=None, image_shape=None) -> None:
    from .plots import band_histogram, training_curves
    png = training_curves(out / "metrics.jsonl", out / "curves.png", f"{summary['model']} on {summary['dataset']}")
    if model is not None and summary.get("method") == "apb":
        band_histogram(model, out / "band.png")
    if not quiet and model is not None and summary.get("method") != "fp":
        from .summary import summarize
        print("\n" + summarize(model, image_shape).table())
    if not quiet:
        print(f"\ntest accuracy {100 * summary['test_accuracy']:.2f}% after {summary['epochs']} epochs | "
              f"{summary['images_per_second']:.0f} train img/s | wall {summary['wall_seconds']:.1f} s")
        print(f"run directory {out}: summary.json, metrics.jsonl, last.ckpt, best.ckpt, {png.name}")


def cmd_train(args: argparse.Namespace) -> int:
    from .train import Trainer
    config = _config_from_args(args)
    out = Path(args.out or f"runs/{config.model}-{config.dataset}-seed{config.seed}")
    trainer = Trainer(config, out, progress=not args.quiet)
    summary = trainer.run(resume=args.resume)
    _finish_run(out, summary, args.quiet, trainer.model, trainer.data.image_shape)
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from .export import packed_size
    from .summary import summarize
    from .train import export_args, load_model
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
    from .export import export_model
    from .summary import summarize
    from .train import export_args, load_model
    model, config, data = load_model(args.checkpoint)
    nbytes = export_model(model, *export_args(config, data)).save(args.output)
    s = summarize(model, data.image_shape, packed_bytes=nbytes)
    print(f"wrote {args.output}: {nbytes:,} bytes (paper formula {s.model_bits / 8:,.0f} bytes, "
          f"float32 {s.float32_bits / 8:,.0f} bytes)")
    return 0


def cmd_eval_packed(args: argparse.Namespace) -> int:
    from . import kernels
    from .data import load_dataset
    from .infer import PackedNetwork
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
    from .train import evaluate, load_model
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
    from .train import TrainConfig, Trainer
    config = TrainConfig(model="digits_cnn", dataset="digits", epochs=args.epochs, batch_size=32, lr=0.05,
                         weight_decay=5e-4, seed=args.seed, method="apb", bits_per_weight=args.bits_per_weight)
    out = Path(args.out)
    if (out / "last.ckpt").exists() and not args.resume:
        import shutil
        shutil.rmtree(out)  # the demo always starts fresh unless asked to resume
    print(f"apb-ref {__version__} demo: {config.model} on {config.dataset}, {config.epochs} epochs, pure NumPy; "
          f"APB compresses the middle convs to {config.bits_per_weight} bits/weight (first conv and last linear stay float32)")
    trainer = Trainer(config, out, progress=not args.quiet)
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
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .train import TrainingDiverged
    try:
        return args.func(args)
    except TrainingDiverged as e:
        print(f"apb-ref: training stopped: {e}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError, FileExistsError, KeyError) as e:
        print(f"apb-ref: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\napb-ref: interrupted; the last completed epoch is saved (continue with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
