"""Run the tutorial notebooks top to bottom and store them with their outputs, or check the stored ones.

    python tutorials/execute.py                 # execute every notebook, store it with its outputs
    python tutorials/execute.py 03_bits_and_popcounts.ipynb
    python tutorials/execute.py --check         # no execution: are the stored outputs from the current code?

The .ipynb files are the source: edit them in Jupyter, then run this script so that the stored outputs
come from the code as it now reads. Each notebook runs in a fresh kernel whose working directory is
tutorials/ (so a reader's Jupyter and this script see the same paths).

What a stored notebook must satisfy (`problems`, used by tests/tutorials and by --check):

* every code cell ran once, in order: execution counts 1, 2, ..., n;
* a cell tagged `no-output` (imports, definitions) shows nothing; every other code cell shows something;
* no error output and nothing on stderr;
* the notebook's metadata records the SHA-256 of its code cells' sources at execution time and the
  apb_ref version it ran with, and both equal the current ones: a notebook edited but not re-executed,
  or executed with another apb_ref version, is stale.

The BLAS thread variables (OPENBLAS_NUM_THREADS, ...) pass through to the kernel: set them in the
shell to run the notebooks on a shared machine.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
METADATA_KEY = "apb_ref_tutorial"
SILENT_TAG = "no-output"
KERNEL = "python3"


def notebooks() -> list[Path]:
    """The course, in order: tutorials/NN_*.ipynb."""
    return sorted(HERE.glob("[0-9][0-9]_*.ipynb"))


def code_cells(nb) -> list:
    return [c for c in nb.cells if c.cell_type == "code"]


def source_hash(nb) -> str:
    """SHA-256 of the code cells' sources, in order (markdown edits need no re-execution)."""
    sources = [c.source for c in code_cells(nb)]
    return hashlib.sha256(json.dumps(sources, ensure_ascii=False).encode()).hexdigest()


def apb_ref_version() -> str:
    import apb_ref
    return apb_ref.__version__


def _is_silent(cell) -> bool:
    return SILENT_TAG in cell.get("metadata", {}).get("tags", [])


def output_problems(nb) -> list[str]:
    """What is wrong with the outputs themselves (no metadata involved): counts, presence, errors."""
    found = []
    for i, cell in enumerate(code_cells(nb), 1):
        where = f"code cell {i}"
        if cell.execution_count != i:
            found.append(f"{where}: execution_count {cell.execution_count}, expected {i} (run top to bottom once)")
        outputs = cell.get("outputs", [])
        if _is_silent(cell) and outputs:
            found.append(f"{where}: tagged {SILENT_TAG!r} but shows {len(outputs)} output(s)")
        if not _is_silent(cell) and not outputs:
            found.append(f"{where}: shows nothing (tag it {SILENT_TAG!r} if that is meant)")
        for out in outputs:
            if out.get("output_type") == "error":
                found.append(f"{where}: error {out.get('ename')}: {out.get('evalue')}")
            if out.get("output_type") == "stream" and out.get("name") == "stderr":
                found.append(f"{where}: writes to stderr: {''.join(out.get('text', ''))[:200]!r}")
    return found


def problems(nb) -> list[str]:
    """Everything that makes a stored notebook stale or unreadable; [] when it is fresh."""
    found = output_problems(nb)
    meta = nb.metadata.get(METADATA_KEY)
    if not meta:
        return found + [f"no {METADATA_KEY} metadata: never stored by tutorials/execute.py"]
    if meta.get("source_sha256") != source_hash(nb):
        found.append("code changed since the last execution: run python tutorials/execute.py")
    if meta.get("apb_ref_version") != apb_ref_version():
        found.append(f"executed with apb_ref {meta.get('apb_ref_version')}, now {apb_ref_version()}: re-execute")
    return found


def execute(path: Path, timeout: float | None = 600.0):
    """Run the notebook at `path` in a fresh kernel (cwd tutorials/); returns (executed notebook, seconds).
    Raises nbclient's CellExecutionError at the first failing cell, CellTimeoutError past `timeout`
    seconds for one cell."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name=KERNEL, record_timing=False, coalesce_streams=True,
                            resources={"metadata": {"path": str(HERE)}})
    start = time.perf_counter()
    client.execute()
    return nb, time.perf_counter() - start


def store(path: Path, timeout: float | None = 600.0) -> float:
    """Execute the notebook and write it back with its outputs and the freshness record."""
    import nbformat

    nb, seconds = execute(path, timeout)
    trouble = output_problems(nb)
    if trouble:
        raise RuntimeError(f"{path.name}: not stored:\n  " + "\n  ".join(trouble))
    nb.metadata[METADATA_KEY] = {"source_sha256": source_hash(nb), "apb_ref_version": apb_ref_version()}
    nbformat.validate(nb)
    nbformat.write(nb, path)
    return seconds


def _chosen(names: list[str]) -> list[Path]:
    if not names:
        return notebooks()
    paths = []
    for name in names:
        p = Path(name)
        p = p if p.exists() else HERE / p.name
        if not p.exists():
            raise SystemExit(f"execute.py: no notebook {name}")
        paths.append(p.resolve())
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", help="notebooks to run (default: all of tutorials/NN_*.ipynb)")
    parser.add_argument("--check", action="store_true", help="execute nothing; report stale or unreadable notebooks")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds one cell may take (default: 600)")
    args = parser.parse_args(argv)
    import nbformat

    status = 0
    for path in _chosen(args.notebooks):
        if args.check:
            trouble = problems(nbformat.read(path, as_version=4))
            print(f"{path.name}: " + ("fresh" if not trouble else "STALE\n  " + "\n  ".join(trouble)))
            status |= bool(trouble)
            continue
        print(f"{path.name}: executing ...", flush=True)
        print(f"{path.name}: stored, {store(path, args.timeout):.1f} s", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
