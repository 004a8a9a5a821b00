"""Which options make 1-bit activations train stably: one run per variant, the same recipe and seed.

    python benchmarks/ablation_1bit.py --out runs/ablation [--variants base bireal ...] [-- TRAIN_FLAGS]
    python benchmarks/ablation_1bit.py --smoke --out /tmp/ablation      # a tiny digits version (seconds)

Every variant is APB at 1.6 bits/weight with 1-bit activations plus a set of options (VARIANTS), on top of
the recipe with every option off (NONE: per-epoch schedule, basic blocks, no re-estimation); `kd`
distils from a full-precision run of the same recipe (the `fp` variant, trained first). The `-3ep`
and `-6ep` variants are the default recipe (what the ablation chose), some with the activation scale on
top, over 3 and 6 epochs for APB and BNN, with their full-precision reference of the same epochs. The clipped
straight-through estimator is no variant: with 1-bit activations the models put a hardtanh before every
sign, so its inputs never leave [−1, 1] and `--act-ste clipped` trains bit for bit as the identity
(`approx-ste`, Bi-Real's ApproxSign, does differ). Each run is
`apb-ref train` in its own directory `OUT/<variant>`: a finished run is read back, an interrupted one
resumes (`--resume`), so running the same command again continues. The report: a table (final test
accuracy, its gap to the full-precision run of the same schedule and epochs, the test accuracy of
best.ckpt chosen on validation, the largest drop of test accuracy between consecutive epochs, training
images/s), `OUT/ablation.png` (test accuracy per
epoch, one line per variant) and `benchmarks/results/ablation_1bit.json`.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from common import print_table, write_json

RECIPE = ["--model", "resnet20", "--dataset", "fashion-mnist", "--pad-to", "32", "--epochs", "2", "--batch-size", "64",
          "--optimizer", "adam", "--lr", "0.005", "--weight-decay", "0", "--seed", "0"]
SMOKE = ["--model", "digits_cnn", "--dataset", "digits", "--epochs", "3", "--batch-size", "32", "--optimizer", "adam",
         "--lr", "0.005", "--weight-decay", "0", "--limit-train", "300", "--limit-test", "100", "--seed", "0"]
# Every option off (the defaults before this ablation chose them): each variant turns on its own
NONE = ["--lr-update", "epoch", "--block", "basic", "--bn-recalibrate", "0"]
APB_A1 = ["--method", "apb", "--bits-per-weight", "1.6", "--act-bits", "1"]
BNN_A1 = ["--method", "bnn", "--act-bits", "1"]
# the default recipe the ablation chose: per-batch schedule, Bi-Real blocks, BatchNorm re-estimation
DEFAULT = ["--lr-update", "batch", "--block", "bireal", "--bn-recalibrate", "20"]
VARIANTS = {
    "fp": [],  # the full-precision reference (and the teacher of `kd`)
    "base": APB_A1,
    "recalibrate": APB_A1 + ["--bn-recalibrate", "20"],
    "bireal": APB_A1 + ["--block", "bireal"],
    "kd": APB_A1 + ["--teacher", "{fp}"],
    "two-step": APB_A1 + ["--float-act-epochs", "1"],
    "react": APB_A1 + ["--react"],
    "approx-ste": APB_A1 + ["--act-ste", "approx"],
    # the schedule advanced after every batch (annealed to zero) instead of after every epoch, with its own reference
    "fp-anneal": ["--lr-update", "batch"],
    "anneal": APB_A1 + ["--lr-update", "batch"],
    # the default recipe (per-batch schedule, Bi-Real blocks, BatchNorm re-estimation) over 3 epochs, against
    # full precision over the same epochs, for APB and for BNN
    "fp-3ep": ["--lr-update", "batch", "--epochs", "3"],
    # (APB's -3ep run and default+act-scale-6ep projected the budget at the start of the last epoch, the
    # default then: pinned with --budget-epoch so they still do)
    "default-3ep": APB_A1 + DEFAULT + ["--budget-epoch", "2", "--epochs", "3"],
    "bnn-default-3ep": BNN_A1 + DEFAULT + ["--epochs", "3"],
    "bnn-default+act-scale-3ep": BNN_A1 + DEFAULT + ["--act-scale", "--epochs", "3"],
    # the same over 6 epochs, and with the activation scale on top (a candidate default)
    "fp-6ep": ["--lr-update", "batch", "--epochs", "6"],
    "default+act-scale-6ep": APB_A1 + DEFAULT + ["--act-scale", "--budget-epoch", "5", "--epochs", "6"],
    "bnn-default-6ep": BNN_A1 + DEFAULT + ["--epochs", "6"],
    # the budget projected at the start of epoch 4 of 6 instead of the last: three epochs at the full budget
    # (the default since this run: --budget-epoch epochs // 2)
    "default+early-projection-6ep": APB_A1 + DEFAULT + ["--budget-epoch", "3", "--epochs", "6"],
    "default+act-scale+early-projection-6ep": APB_A1 + DEFAULT + ["--act-scale", "--budget-epoch", "3", "--epochs", "6"],
    "act-scale": APB_A1 + ["--act-scale"],
    "bireal+recalibrate": APB_A1 + ["--block", "bireal", "--bn-recalibrate", "20"],
    "all": APB_A1 + ["--block", "bireal", "--bn-recalibrate", "20", "--teacher", "{fp}"],
}


def flags_of(variant: str, out: Path, recipe: list[str]) -> list[str]:
    flags = [f.replace("{fp}", str(out / "fp" / "last.ckpt")) for f in VARIANTS[variant]]
    return recipe + NONE + flags  # later flags win


def train(variant: str, out: Path, recipe: list[str]) -> str:
    """Train, resume or read back one variant; returns what was done."""
    run = out / variant
    if (run / "summary.json").is_file():
        return "done (cached)"
    resume = ["--resume"] if (run / "last.ckpt").is_file() else []
    cmd = [sys.executable, "-m", "apb_ref", "train", *flags_of(variant, out, recipe), "--out", str(run), "--quiet",
           *resume]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{variant}: apb-ref train failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return "resumed" if resume else "trained"


def result(variant: str, out: Path) -> dict:
    run = out / variant
    summary = json.loads((run / "summary.json").read_text())
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    accuracy = [r["test_accuracy"] for r in records]
    drops = [a - b for a, b in zip(accuracy, accuracy[1:])]  # from each epoch to the next; a rise is no drop
    return {"variant": variant, "flags": VARIANTS[variant], "test_accuracy": summary["test_accuracy"],
            "best_test_accuracy": summary.get("best_test_accuracy"), "best_epoch": summary.get("best_epoch"),
            "per_epoch_test_accuracy": accuracy, "largest_drop": max([0.0] + drops),
            "bits_per_weight": summary["bits_per_weight"], "images_per_second": summary["images_per_second"]}


def reference(variant: str) -> str:
    """The full-precision run trained with the same schedule and epochs as `variant` (itself for one)."""
    if variant.startswith("fp"):
        return variant
    for epochs in ("-3ep", "-6ep"):
        if variant.endswith(epochs):
            return "fp" + epochs
    return "fp-anneal" if variant == "anneal" else "fp"


def plot(rows: list[dict], png: Path, title: str) -> None:
    from matplotlib.figure import Figure
    from matplotlib import colormaps
    fig = Figure(figsize=(9.5, 4.8), layout="constrained")
    ax = fig.subplots()
    for i, r in enumerate(rows):
        epochs = range(1, len(r["per_epoch_test_accuracy"]) + 1)
        ax.plot(epochs, [100 * a for a in r["per_epoch_test_accuracy"]], marker="os^vDP*X"[i % 8],
                ls="--" if r["variant"].startswith("fp") else "-", label=r["variant"], color=colormaps["tab20"](i % 20))
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))  # outside: 16 lines would hide the curves
    fig.savefig(png, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="one run directory per variant goes here")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--smoke", action="store_true", help="the tiny digits recipe, no ResNet-20-only variants")
    parser.add_argument("--json", help="where to write the results (default: benchmarks/results/ablation_1bit.json)")
    parser.add_argument("recipe", nargs="*", help="after --: apb-ref train flags replacing the default recipe")
    args = parser.parse_args()
    recipe = args.recipe or (SMOKE if args.smoke else RECIPE)
    resnet_only = ("--block", "--react", "--act-scale")  # digits_cnn has no blocks: the smoke run leaves these variants out
    variants = [v for v in args.variants if not (args.smoke and any(f in VARIANTS[v] for f in resnet_only))]
    if any("{fp}" in " ".join(VARIANTS[v]) for v in variants) and "fp" not in variants:
        variants.insert(0, "fp")  # the teacher first
    args.out.mkdir(parents=True, exist_ok=True)
    for i, variant in enumerate(variants, 1):
        print(f"[{i}/{len(variants)}] {variant}: {train(variant, args.out, recipe)}", flush=True)
    rows = [result(v, args.out) for v in variants]
    by_name = {r["variant"]: r for r in rows}
    for r in rows:
        ref = by_name.get(reference(r["variant"]))
        r["gap_to_fp"] = None if ref is None or ref is r else ref["test_accuracy"] - r["test_accuracy"]
    print_table(["variant", "test acc (%)", "gap to fp (pp)", "best.ckpt test acc (%)", "largest drop (pp)", "bits/w",
                 "train img/s"],
                [[r["variant"], f"{100 * r['test_accuracy']:.2f}",
                  "-" if r["gap_to_fp"] is None else f"{100 * r['gap_to_fp']:.2f}",
                  "-" if r["best_test_accuracy"] is None else f"{100 * r['best_test_accuracy']:.2f}",
                  f"{100 * r['largest_drop']:.2f}", f"{r['bits_per_weight']:.3f}", f"{r['images_per_second']:.0f}"]
                 for r in rows])
    png = args.out / "ablation.png"
    flag = lambda name, default="?": recipe[recipe.index(name) + 1] if name in recipe else default  # noqa: E731
    plot(rows, png, f"1-bit activations, APB 1.6 bits/weight: test accuracy per epoch\n{flag('--model')} on "
         f"{flag('--dataset')}, {flag('--epochs')} epochs (-3ep: 3, -6ep: 6), seed {flag('--seed', '0')}; dashed: full precision")
    print(f"wrote {png}")
    write_json("ablation_1bit", {"recipe": recipe, "rows": rows}, args.json)


if __name__ == "__main__":
    main()
