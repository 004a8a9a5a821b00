"""Packed ResNet-20 inference of every method with a packed form against the float model, images/s
(1×32×32 inputs, 10 classes).

    python benchmarks/packed_inference.py [--images 1024] [--repeats 3] [--methods apb uniform ...]
                                          [--backends rust numpy] [--sbnn-p 0.5 0.05]
                                          [--blocks basic bireal react act-scale] [--checkpoints runs/study/*/last.ckpt]
                                          [--batch-size 256] [--unfused] [--no-torch] [--no-tflite]
                                          [--settle 0.3] [--rust-threads 1 2]

The packed models are freshly initialised ResNet-20s brought to the memory of the study's cells
(BENCHMARKS.md): APB with its masks projected to 1.6 bits/weight (1.2766 % full-precision weights),
BNN (1 bit), 2-bit uniform (2 bits), pruning and pruning + 2-bit at 1.6 bits/weight (densities 3.33 %
and 8.9 %, the masks at the end of their schedule), SBNN at each --sbnn-p (the closed form of the
initial weights with that fraction of each layer at β). Each runs with 1-, 2- and 32-bit activations,
exported and run by `apb_ref.packed.PackedNetwork` on each kernel backend; speed depends on the
weights only through the number of non-zeros, which the budget fixes (SBNN: through the fraction at β
and its constant rows, which cost nothing; a trained model may have some). --checkpoints adds trained
models as they are, at the activations they were trained with, labelled by their run directory. The baseline is the float
ResNet-20 (NumPy autograd, eval mode) on the same images in the same run. Each figure is the median
over --repeats passes over --images images in batches of --batch-size (256). On the Rust kernels a
1- or 2-bit ResNet-20 of APB or BNN runs as one BinaryNet call (`apb_ref/packed/fused.py`: every conv
fused, bits between layers); --unfused adds each such model again with its blocks run conv by conv, labelled
"unfused". When PyTorch imports (optional, never required), its float ResNet-20 (eval mode,
`torch.inference_mode`, as many threads as the kernels: APB_NUM_THREADS, else every core) takes turns
too, and "vs PyTorch" is each model's same-round ratio to it; likewise TFLite with XNNPack ("vs TFLite",
when tensorflow imports: `tflite_float.py`). Set OPENBLAS_NUM_THREADS to the same
count for the NumPy float model. The models take turns (one pass each per
round, `apb_ref.bench.measure_interleaved`); "vs float" and "vs APB" (APB 1.6 bits/weight, the same
activations and kernels) are medians of same-round ratios, so a slow spell of a shared host slows
every model alike; each pass starts after --settle seconds of sleep, so that no engine's idle threads
still spin while the next one runs. --rust-threads runs every packed model on each of those Rust thread
counts in the same rounds (APB_NUM_THREADS set around each pass), so two counts are compared the way the
models are: "vs 1 thread" is the same-round ratio to the model on one thread (the float engines keep the
threads they started with). It then times each model's batches one at a time on 1 and on the most threads,
in turns (`thread_turns`), with two controls in the same turns: the bound's loop and, for a batch smaller than
the thread count, each model that runs as one `BinaryNet` on one image per thread. The Rust kernels are the
default (the NumPy oracles run ResNet-20 at ~15 img/s).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import os
import time
from pathlib import Path

import numpy as np

import tflite_float
import torch_float
from common import CLEAN, bound_pair, machine, print_table, write_json

from apb_ref.autograd import Tensor, no_grad
from apb_ref.bench import alternating_speedups, measure_interleaved, speedup, speedup_where
from apb_ref.packed import PackedNetwork, export_model, layer_bytes
from apb_ref.packed.fused import FusedBlocks
from apb_ref.kernels import backend
from apb_ref.models import build
from apb_ref.quant import quantized_layers, sbnn
from apb_ref.quant.budget import MemoryBudget, fp_fraction_for_bits
from apb_ref.training import export_args, load_model
from apb_ref.training.runtime import reuse_freed_memory
from apb_ref.training.summary import index_bits, summarize

BITS_PER_WEIGHT = 1.6  # the budget of the budgeted methods (APB, pruning)
METHODS = ("apb", "bnn", "uniform", "prune", "prune_uniform", "sbnn")
# --blocks: ResNet-20 variants of the 1-bit activation options (METHODS §1.6.1), as build() arguments
BLOCKS = {"basic": {}, "bireal": {"block": "bireal"}, "react": {"react": True}, "act-scale": {"act_scale": True}}


def packed_resnet20(method: str, act_bits: int, sbnn_p: float = 0.5, block: str = "basic") -> tuple[PackedNetwork, float]:
    """The packed model and what its file stores per compressed weight (bits)."""
    act = "hardtanh" if act_bits == 1 else "relu"
    model = build("resnet20", num_classes=10, in_channels=1, method=method, act_bits=act_bits, act=act,
                  **BLOCKS[block])
    b_idx = index_bits(model)
    if method == "sbnn":
        sbnn.quantize_model(model, density=sbnn_p)
    if method == "apb":
        MemoryBudget(fp_fraction_for_bits(BITS_PER_WEIGHT, b_idx)).project(model)
    elif method.startswith("prune"):
        for _, layer in quantized_layers(model):
            layer.weight_quantizer.set_budget(BITS_PER_WEIGHT, None, b_idx)
            layer.weight_quantizer.on_step(1.0, layer.weight.data)  # the end of the schedule
    model.eval()
    build_args = {"name": "resnet20", "num_classes": 10, "in_channels": 1, "image_size": 32, "act": act,
                  **BLOCKS[block]}
    return packed_with_bits(model, build_args)


def packed_with_bits(model, build_args: dict, normalization: dict | None = None) -> tuple[PackedNetwork, float]:
    packed = export_model(model, build_args, normalization)
    s = summarize(model, (build_args["in_channels"], build_args["image_size"], build_args["image_size"]),
                  packed_bytes=len(packed.to_bytes()), layer_bytes=layer_bytes(packed))
    return PackedNetwork(packed), s.packed_bits_per_weight


def trained(path: str) -> tuple[str, int, PackedNetwork, float]:
    """A trained checkpoint's label (its run directory), activation bits, packed network and file bits/weight."""
    model, config, data = load_model(path)
    if tuple(data.image_shape) != (1, 32, 32):
        raise SystemExit(f"{path}: a model of {'x'.join(map(str, data.image_shape))} images; this benchmark times "
                         "1x32x32 inputs (e.g. --pad-to 32 of a 1-channel dataset)")
    net, stored = packed_with_bits(model, *export_args(config, data))
    act_bits = max(layer.act_quantizer.bits for _, layer in quantized_layers(model))  # PaBT: its live bases
    return f"{Path(path).parent.name} (trained)", act_bits, net, stored


BOUND_STEPS = 1 << 18  # the bound's loop: about a millisecond per call


@contextlib.contextmanager
def rust_threads(threads: int | None):
    """APB_NUM_THREADS (read by the Rust kernels on every call) set to `threads` (None: left as it is)
    inside, and as it was after."""
    before = os.environ.get("APB_NUM_THREADS")
    if threads is not None:
        os.environ["APB_NUM_THREADS"] = str(threads)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("APB_NUM_THREADS", None)
        else:
            os.environ["APB_NUM_THREADS"] = before


def runs_as_one_net(net) -> bool:
    """Whether a packed model's Rust forward, once run, goes through one `BinaryNet` call (its blocks, or the
    whole network): with at least as many images as threads, each thread then takes whole images there and
    never waits for another. Other models split each conv call's work between the threads (`bconv`)."""
    blocks = getattr(net.model, "blocks", None)  # a VGG or a digits CNN has none
    return isinstance(blocks, FusedBlocks) and any(n is not None for n in blocks._nets.values())


def thread_turns(forwards: dict, counts: list[int], xb: np.ndarray, batches: int, one_net=frozenset()) -> dict:
    """Each packed model's speed-up from 1 to max(counts) Rust threads on one batch `xb`, all models (and
    the bound's loop, when this CPU has it) in the same turns (`alternating_speedups`); per model also
    the speed-up over the batches in which the bound scaled (`speedup_where`).

    With fewer images in `xb` than threads, the threads split each image and wait for each other between
    stages. Each model in `one_net` (`runs_as_one_net`) then also runs one image per thread in the same turns
    ("whole_images"): the same work per image, with no waits between the threads. Its speed-up says whether
    the host let the threads run this work side by side at full speed, which the bound's loop, on registers
    alone, cannot tell for the caches and memory. Per model also the speed-up over the batches in which that
    control scaled."""
    import apb_ref._kernels as R  # forwards are Rust models, so the extension is built
    t_max = max(counts)
    whole = np.concatenate([xb] * t_max)[:t_max] if len(xb) < t_max else None

    def at(forward, threads, x):
        def call():
            os.environ["APB_NUM_THREADS"] = str(threads)  # restored by rust_threads below
            forward(x)
        return call

    def pair(forward, x):
        one = at(forward, 1, x)
        one()
        start = time.perf_counter()
        one()
        run = max(1, round(0.005 / (time.perf_counter() - start)))  # ~5 ms of timed calls a turn
        return one, at(forward, t_max, x), run, 1.0

    pairs = {}
    with rust_threads(None), backend.use_backend("rust"):
        for key, forward in forwards.items():
            pairs[key] = pair(forward, xb)
            if whole is not None and key in one_net:
                pairs[(key, "whole")] = pair(forward, whole)
        if R.xor_popcount_peak(threads=1, steps=1) is not None:
            pairs["bound"] = bound_pair(R.xor_popcount_peak, t_max, BOUND_STEPS)
        got = alternating_speedups(pairs, batches=batches, turns=5)
    for key in forwards:
        if "bound" in got:
            got[key]["where_the_bound_scaled"] = speedup_where(got, key, "bound", CLEAN * t_max)
        if (key, "whole") in got:
            got[key]["where_whole_images_scaled"] = speedup_where(got, key, (key, "whole"), CLEAN * t_max)
            got[key]["whole_images"] = got.pop((key, "whole"))
    return got


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backends", nargs="+", choices=backend.BACKENDS,
                        default=["rust"] if "rust" in backend.available_backends() else ["numpy"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--act-bits", nargs="+", type=int, default=[1, 2, 32], choices=[1, 2, 32])
    parser.add_argument("--sbnn-p", nargs="+", type=float, default=[0.5, 0.05], metavar="P",
                        help="fractions of SBNN weights at β to time (default: 0.5, the BNN-like start, and 0.05)")
    parser.add_argument("--blocks", nargs="+", choices=BLOCKS, default=["basic"],
                        help="ResNet-20 variants to time (bireal: a real-valued shortcut around every conv; react: "
                             "ReActNet's learned activations; act-scale: XNOR-Net's activation scale)")
    parser.add_argument("--checkpoints", nargs="+", default=[], metavar="CKPT",
                        help="trained checkpoints to time as well, at their own activations")
    parser.add_argument("--batch-size", type=int, default=256, help="images per forward pass (default: 256)")
    parser.add_argument("--unfused", action="store_true",
                        help="also time each model with fused blocks with its blocks run conv by conv")
    parser.add_argument("--no-torch", action="store_true", help="leave out the PyTorch float model even if torch imports")
    parser.add_argument("--no-tflite", action="store_true",
                        help="leave out the TFLite (XNNPack) float model even if tensorflow imports")
    parser.add_argument("--settle", type=float, default=0.3,
                        help="seconds of sleep before each model's pass, so that the previous engine's worker "
                             "threads (PyTorch's OpenMP, XNNPack's pool) stop spinning first (default: 0.3)")
    parser.add_argument("--rust-threads", nargs="+", type=int, default=None, metavar="N",
                        help="run the packed models on each of these Rust thread counts, in the same rounds "
                             "(default: APB_NUM_THREADS, else every core)")
    parser.add_argument("--turn-batches", type=int, default=9,
                        help="with two or more --rust-threads: batches of turns in which the packed models' thread "
                             "speed-up is also measured, one --batch-size call at a time (default: 9)")
    parser.add_argument("--json", help="where to write the results (default: benchmarks/results/packed_inference.json)")
    args = parser.parse_args()
    if args.images < 1 or args.repeats < 1 or args.batch_size < 1:
        parser.error("--images, --repeats and --batch-size must be >= 1")
    if not args.settle >= 0:
        parser.error("--settle must be >= 0 seconds")
    if args.rust_threads is not None and min(args.rust_threads) < 1:
        parser.error("--rust-threads must be >= 1")
    if args.turn_batches < 1:
        parser.error("--turn-batches must be >= 1")
    counts = args.rust_threads or [None]
    batch = args.batch_size
    reuse_freed_memory()
    x = np.random.default_rng(0).standard_normal((args.images, 1, 32, 32)).astype(np.float32)

    def passes(forward, backend_name="numpy", threads=None):
        def run():
            with rust_threads(threads), backend.use_backend(backend_name):
                for i in range(0, len(x), batch):
                    forward(x[i:i + batch])
        return run

    float_model = build("resnet20", num_classes=10, in_channels=1)
    float_model.eval()

    def float_forward(xb):
        with no_grad():
            return float_model(Tensor(xb))

    runs = {"float": passes(float_forward)}
    if not args.no_torch and torch_float.available():
        runs["torch"] = passes(torch_float.inference(in_channels=1))
    if not args.no_tflite and tflite_float.available():
        runs["tflite"] = passes(tflite_float.inference(in_channels=1))
    bits = {}
    models = [(m, {}) for m in args.methods if m != "sbnn"]
    if "sbnn" in args.methods:
        models += [(f"sbnn p={p:g}", {"sbnn_p": p}) for p in args.sbnn_p]
    models = [(label if block == "basic" else f"{label} {block}", {**kwargs, "block": block})
              for block in args.blocks for label, kwargs in models]
    forwards = {}  # (label, act_bits) -> the packed model's forward on the Rust kernels
    nets = {}  # (label, act_bits) -> the packed model

    def add(label, act_bits, net):
        if "rust" in args.backends:
            forwards[(label, act_bits)], nets[(label, act_bits)] = net.logits, net
        for name in args.backends:
            for t in (counts if name == "rust" else [None]):  # the NumPy kernels have no threads
                runs[(label, act_bits, name, t)] = passes(net.logits, name, t)
        if args.unfused and isinstance(net.model.blocks, FusedBlocks):
            plain = copy.deepcopy(net)
            plain.model.blocks = plain.model.blocks.unfused
            bits[f"{label} unfused"] = bits[label]
            add(f"{label} unfused", act_bits, plain)

    for label, kwargs in models:
        for act_bits in args.act_bits:
            net, bits[label] = packed_resnet20(label.split()[0], act_bits, **kwargs)
            add(label, act_bits, net)
    for path in args.checkpoints:
        label, act_bits, net, bits[label] = trained(path)
        add(label, act_bits, net)
    # one warm-up each, then --repeats rounds of one pass per model
    timed, _ = measure_interleaved(runs, repeats=args.repeats, min_time=0.0, rounds=args.repeats, settle=args.settle)
    one_net = {key for key, net in nets.items() if runs_as_one_net(net)}  # each has run (above)
    turns = thread_turns(forwards, counts, x[:batch], args.turn_batches, one_net) if len(counts) > 1 else {}
    base = len(x) / timed["float"]["median_s"]
    torch, tflite = timed.get("torch"), timed.get("tflite")

    def vs_torch(stats):
        return "-" if torch is None else f"{speedup(torch, stats):.2f}x"

    def vs_tflite(stats):
        return "-" if tflite is None else f"{speedup(tflite, stats):.2f}x"

    rows = [["float ResNet-20 (NumPy autograd)", "32.000", "32", "-", f"{base:.0f}", "1.00x", "-", "-",
             vs_torch(timed["float"]), vs_tflite(timed["float"])]]
    records = [{"model": "float", "act_bits": 32, "backend": "numpy", "images_per_second": base}]
    if torch is not None:
        rows.append(["float ResNet-20 (PyTorch)", "32.000", "32", "torch", f"{len(x) / torch['median_s']:.0f}",
                     f"{speedup(timed['float'], torch):.2f}x", "-", "-", "1.00x", vs_tflite(torch)])
        records.append({"model": "torch-float", "act_bits": 32, "backend": "torch",
                        "images_per_second": len(x) / torch["median_s"], "vs_float": speedup(timed["float"], torch)})
    if tflite is not None:
        rows.append(["float ResNet-20 (TFLite, XNNPack)", "32.000", "32", "tflite",
                     f"{len(x) / tflite['median_s']:.0f}", f"{speedup(timed['float'], tflite):.2f}x", "-", "-",
                     vs_torch(tflite), "1.00x"])
        records.append({"model": "tflite-float", "act_bits": 32, "backend": "tflite",
                        "images_per_second": len(x) / tflite["median_s"],
                        "vs_float": speedup(timed["float"], tflite),
                        "vs_torch": None if torch is None else speedup(torch, tflite)})
    for key, stats in timed.items():
        if key in ("float", "torch", "tflite"):
            continue
        method, act_bits, name, t = key
        speed, ratio = len(x) / stats["median_s"], speedup(timed["float"], stats)
        apb = timed.get(("apb", act_bits, name, t))
        vs_apb = speedup(apb, stats) if apb is not None else None
        bnn = timed.get(("bnn", act_bits, name, t))
        vs_bnn = speedup(bnn, stats) if bnn is not None else None
        one = timed.get((method, act_bits, name, 1)) if len(counts) > 1 else None
        vs_one = speedup(one, stats) if one is not None else None
        row = [f"packed {method}" + (f" ({t} threads)" if len(counts) > 1 and t else ""), f"{bits[method]:.3f}",
               str(act_bits), name, f"{speed:.0f}", f"{ratio:.2f}x",
               f"{vs_apb:.2f}x" if vs_apb is not None else "-", f"{vs_bnn:.2f}x" if vs_bnn is not None else "-",
               vs_torch(stats), vs_tflite(stats)]
        rows.append(row + ([f"{vs_one:.2f}x" if vs_one is not None else "-"] if len(counts) > 1 else []))
        records.append({"model": f"packed-{method}", "method": method.split()[0],
                        "block": next((w for w in method.split()[1:] if w in BLOCKS), "basic"),
                        "unfused": method.endswith(" unfused"),
                        "file_bits_per_weight": bits[method],
                        "act_bits": act_bits, "backend": name, "images_per_second": speed, "vs_float": ratio,
                        "vs_apb": vs_apb, "vs_bnn": vs_bnn, "rust_threads": t, "vs_one_thread": vs_one,
                        "vs_one_thread_in_turns": turns.get((method, act_bits)) if t == max(counts) else None,
                        "vs_torch": None if torch is None else speedup(torch, stats),
                        "vs_tflite": None if tflite is None else speedup(tflite, stats)})
    # the APB paper's speed claim: APB with 1-bit activations against a 2-bit model (2-bit weights and
    # activations), same kernels, same rounds
    t0 = {name: counts[0] if name == "rust" else None for name in args.backends}
    headline = {name: speedup(timed[("uniform", 2, name, t0[name])], timed[("apb", 1, name, t0[name])])
                for name in args.backends
                if ("uniform", 2, name, t0[name]) in timed and ("apb", 1, name, t0[name]) in timed}
    m = machine()
    threads = (" and ".join(map(str, counts)) if args.rust_threads
               else os.environ.get("APB_NUM_THREADS") or f"{m['cores']} (every core)")
    print(f"ResNet-20, 1x32x32, {args.images} images in batches of {batch}, median of {args.repeats}; "
          f"{m['cpu']} ({m['cores']} cores), {threads} threads, Rust ISA {backend.rust_isa() or '-'}")
    header = ["model", "file bits/weight", "activation bits", "kernels", "images/s", "vs float", "vs APB", "vs BNN",
              "vs PyTorch", "vs TFLite"] + (["vs 1 thread"] if len(counts) > 1 else [])
    print_table(header, [r + ["-"] * (len(header) - len(r)) for r in rows])
    if turns:
        print(f"\n{max(counts)} threads / 1 thread, one batch of {batch} at a time, the models taking turns (each "
              f"turn: every model on 1 then on {max(counts)} threads, an untimed call before the timed ones), "
              "median over batches of turns" + ("; the bound's loop (XOR, VPOPCNTQ, ADD on registers) in the same "
              "turns says whether the host gave each thread a whole core" if "bound" in turns else ""))
        bar = CLEAN * max(counts)
        has_control = any("whole_images" in got for key, got in turns.items() if key != "bound")
        if has_control:
            print(f"With {max(counts)} threads on a batch of {len(x[:batch])}, they split each image and wait for "
                  f"each other at every stage; the same model on {max(counts)} images, one per thread (no waits), "
                  "in the same turns says whether the host let the threads run this work side by side at full "
                  "speed (- where a model is not one BinaryNet call)")

        def where(w):
            return "-" if w["speedup"] is None else f"{w['speedup']:.2f}x ({w['batches']})"

        rows2 = []
        for key, got in turns.items():
            if key == "bound":
                continue
            row = [f"packed {key[0]}", str(key[1]), f"{got['speedup']:.2f}x"]
            if "bound" in turns:
                row += [f"{turns['bound']['speedup']:.2f}x", where(got["where_the_bound_scaled"])]
            if has_control:
                row += ([f"{got['whole_images']['speedup']:.2f}x", where(got["where_whole_images_scaled"])]
                        if "whole_images" in got else ["-", "-"])
            rows2.append(row)
        print_table(["model", "activation bits", f"{max(counts)}t/1t"]
                    + (["bound's loop", f"{max(counts)}t/1t where the bound >= {bar:.2f}x (batches)"]
                       if "bound" in turns else [])
                    + (["one image per thread", f"{max(counts)}t/1t where that >= {bar:.2f}x (batches)"]
                       if has_control else []), rows2)
    for name, ratio in headline.items():
        print(f"APB {BITS_PER_WEIGHT} bits/weight, 1-bit activations, against 2-bit uniform weights with 2-bit "
              f"activations ({name} kernels, same rounds): {ratio:.2f}x")
    write_json("packed_inference", {"images": args.images, "repeats": args.repeats, "batch_size": batch,
                                    "threads": os.environ.get("APB_NUM_THREADS"), "rust_threads": args.rust_threads,
                                    "results": records, "apb_a1_vs_uniform_a2": headline,
                                    "bound_in_turns": turns.get("bound")}, args.json)


if __name__ == "__main__":
    main()
