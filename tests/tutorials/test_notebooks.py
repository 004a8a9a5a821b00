"""The tutorials (tutorials/NN_*.ipynb): the stored notebooks are fresh (outputs from the current code, no
errors, nothing missing), the READMEs list them in order, and each one runs top to bottom in a fresh kernel
within its time limit.

The executing test is the slow part of this file (six notebooks, each well under 90 s on a 2-core machine);
APB_TUTORIAL_SECONDS raises the per-notebook limit on a slower machine. After editing a notebook, store it
again with `python tutorials/execute.py NOTEBOOK` (see tutorials/README.md)."""
import importlib.util
import os
import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[2]
TUTORIALS = ROOT / "tutorials"
_spec = importlib.util.spec_from_file_location("tutorials_execute", TUTORIALS / "execute.py")
execute = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(execute)

NOTEBOOKS = execute.notebooks()
LIMIT_SECONDS = float(os.environ.get("APB_TUTORIAL_SECONDS", "90"))


def _ids(path: Path) -> str:
    return path.stem


def test_the_course_is_numbered_without_gaps():
    numbers = [int(p.name[:2]) for p in NOTEBOOKS]
    assert numbers == list(range(1, len(NOTEBOOKS) + 1)), [p.name for p in NOTEBOOKS]
    assert len(NOTEBOOKS) >= 6


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids)
def test_stored_notebook_is_fresh(path):
    """Outputs stored from the current code cells and apb_ref version, executed once in order, no errors."""
    problems = execute.problems(nbformat.read(path, as_version=4))
    assert not problems, f"{path.name} (store it again: python tutorials/execute.py {path.name}):\n  " + \
        "\n  ".join(problems)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids)
def test_stored_notebook_opens_with_a_goal_and_closes_with_what_you_learned(path):
    nb = nbformat.read(path, as_version=4)
    first, last = nb.cells[0], nb.cells[-1]
    assert first.cell_type == "markdown" and "**Goal.**" in first.source, f"{path.name}: no goal paragraph on top"
    assert last.cell_type == "markdown" and "## What you learned" in last.source, f"{path.name}: no closing list"


def _linked_notebooks(text: str) -> list[str]:
    return [Path(target).name for target in re.findall(r"\]\(([^)]+\.ipynb)\)", text)]


@pytest.mark.parametrize("readme", ["README.md", "tutorials/README.md"])
def test_readmes_list_the_notebooks_in_order(readme):
    text = (ROOT / readme).read_text()
    if readme == "README.md":
        start = text.index("\n## Learn")
        text = text[start:text.index("\n## ", start + 1)]
    linked = _linked_notebooks(text)
    assert linked == [p.name for p in NOTEBOOKS], f"{readme} lists {linked}"
    for target in re.findall(r"\]\(([^)]+\.ipynb)\)", text):
        assert ((ROOT / readme).parent / target).is_file(), f"{readme} links to {target}, which does not exist"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids)
def test_notebook_runs_top_to_bottom_in_a_fresh_kernel(path, record_property):
    """A fresh kernel, working directory tutorials/: a failing cell fails the test (nbclient raises)."""
    nb, seconds = execute.execute(path, timeout=LIMIT_SECONDS)
    record_property("seconds", round(seconds, 1))
    print(f"{path.name}: executed in {seconds:.1f} s")
    counts = [c.execution_count for c in execute.code_cells(nb)]
    assert counts == list(range(1, len(counts) + 1))
    assert seconds <= LIMIT_SECONDS, (f"{path.name} took {seconds:.0f} s, over its limit of {LIMIT_SECONDS:.0f} s: "
                                      "make its live work smaller (or set APB_TUTORIAL_SECONDS on a slow machine)")
