"""SBNN runs at several expected-connection targets: what each reached, read from its run directory.

    python benchmarks/sbnn_study.py RUN_DIR [RUN_DIR ...] [--json results/sbnn_study.json]

Train the runs with `apb-ref sweep` (cells such as `sbnn:ec=0.1:gamma=0.04:sbnn_init=closed_form`; the
command used is in BENCHMARKS.md). For each SBNN run (a directory with summary.json and last.ckpt) this
prints and records: EC and γ, the activations, test accuracy, the fraction p of the compressed weights
at β that training reached, the entropy bound (the mean over weights of each layer's H(p_l)), the bits
per weight the Golomb-Rice coded positions take, what the packed file stores per compressed weight
(levels, scales, padding and all) and the file's size. The paper's formula is 1 bit/weight for all.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import print_table, write_json

from apb_ref.packed import packed_memory
from apb_ref.quant import quantized_layers
from apb_ref.training import export_args, load_model
from apb_ref.training.summary import summarize


def sbnn_row(run: Path) -> dict | None:
    summary = json.loads((run / "summary.json").read_text())
    if summary.get("method") != "sbnn":
        return None
    model, config, data = load_model(run / "last.ckpt")
    layers = [m for _, m in quantized_layers(model)]
    weights = sum(m.weight.data.size for m in layers)
    at_beta = sum(int((m.weight.data >= 0).sum()) for m in layers)
    coded = sum(m.weight_quantizer.coded_bits(m.weight.data) for m in layers)
    s = summarize(model, data.image_shape, **packed_memory(model, *export_args(config, data)))
    return {"run": run.name, "ec": config.ec, "gamma": config.gamma, "sbnn_init": config.sbnn_init,
            "act_bits": config.act_bits, "epochs": summary["epochs"], "test_accuracy": summary["test_accuracy"],
            "p": at_beta / weights, "entropy_bits_per_weight": s.entropy_bits_per_weight,
            "coded_bits_per_weight": coded / weights, "file_bits_per_weight": s.packed_bits_per_weight,
            "packed_bytes": s.packed_bytes, "formula_bits_per_weight": s.bits_per_weight}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (or sweep directories holding them)")
    parser.add_argument("--json", help="where to write the rows (default: benchmarks/results/sbnn_study.json)")
    args = parser.parse_args()
    dirs = []
    for path in args.runs:
        dirs += [path] if (path / "summary.json").is_file() else sorted(p for p in path.iterdir() if (p / "summary.json").is_file())
    rows = [r for r in map(sbnn_row, dirs) if r is not None]
    if not rows:
        raise SystemExit("no SBNN run (summary.json with method sbnn) in " + ", ".join(map(str, args.runs)))
    rows.sort(key=lambda r: (r["act_bits"], -r["ec"]))
    print_table(["EC", "γ", "act bits", "test acc (%)", "p at β", "H(p) bits/w", "coded bits/w", "file bits/w",
                 "file bytes"],
                [[f"{r['ec']:g}", f"{r['gamma']:g}", r["act_bits"], f"{100 * r['test_accuracy']:.2f}", f"{r['p']:.4f}",
                  f"{r['entropy_bits_per_weight']:.3f}", f"{r['coded_bits_per_weight']:.3f}",
                  f"{r['file_bits_per_weight']:.3f}", f"{r['packed_bytes']:,}"] for r in rows])
    write_json("sbnn_study", {"rows": rows}, args.json)


if __name__ == "__main__":
    main()
