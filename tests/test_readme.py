"""The README's command blocks run as pasted: every `apb-ref` command in them parses (no placeholders,
no stale flags), the Quickstart has exactly two commands, and the blocks marked
`<!-- readme-test: quick -->` are run in order in a fresh directory."""
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from apb_ref.cli import build_parser

README = Path(__file__).parents[1] / "README.md"
FASHION = Path("/usr/share/datasets/fashion-mnist")


def blocks(text: str | None = None) -> list[tuple[bool, list[str]]]:
    """(marked quick, commands) per ```bash block; continuation lines joined, comments dropped."""
    text = README.read_text() if text is None else text
    out = []
    for m in re.finditer(r"(<!-- readme-test: quick -->\n)?```bash\n(.*?)```", text, re.S):
        joined = m.group(2).replace("\\\n", " ")
        commands = [shlex.split(line, comments=True) for line in joined.splitlines()]
        out.append((bool(m.group(1)), [shlex.join(c) for c in commands if c]))
    return out


def apb_ref_commands() -> list[list[str]]:
    """The argv of every apb-ref command in the README (also after an &&)."""
    found = []
    for _, cmds in blocks():
        for c in cmds:
            words = shlex.split(c)
            starts = [i + 1 for i, w in enumerate(words) if w == "&&"]
            found += [words[i:] if "&&" not in words[i:] else words[i:words.index("&&", i)]
                      for i in [0, *starts] if words[i] == "apb-ref"]
    return found


def test_the_quickstart_is_two_commands():
    text = README.read_text()
    quick = text[text.index("## Quickstart"):text.index("\n## ", text.index("## Quickstart") + 3)]
    commands = [c for _, cmds in blocks(quick) for c in cmds]
    assert commands == ["pip install . '&&' apb-ref demo", "pip install -e '.[test]' '&&' python -m pytest -q"]


@pytest.mark.parametrize("argv", apb_ref_commands(), ids=lambda a: " ".join(a[:2]))
def test_every_readme_command_parses(argv):
    try:
        build_parser().parse_args(argv[1:])
    except SystemExit as e:  # argparse's usage error
        pytest.fail(f"README command does not parse ({e.code}): {shlex.join(argv)}")


def test_the_quick_blocks_run_as_pasted(tmp_path):
    if not FASHION.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"Fashion-MNIST is missing at {FASHION}: .ci/run installs it")
        pytest.skip(f"Fashion-MNIST not installed at {FASHION} (apt-get install -y dataset-fashion-mnist)")
    quick = [c for marked, cmds in blocks() if marked for c in cmds]
    assert quick, "no block is marked <!-- readme-test: quick -->"
    for command in quick:
        argv = [sys.executable, "-m", "apb_ref"] + shlex.split(command)[1:]
        done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"


@pytest.mark.parametrize("page", ["README.md", "BENCHMARKS.md", "docs/DESIGN.md", "docs/METHODS.md"])
def test_links_resolve_inside_the_repository(page):
    root = README.parent
    path = root / page
    for target in re.findall(r"\]\(([^)#]+)\)", path.read_text()):
        if "://" not in target:
            assert (path.parent / target).exists(), f"{page} links to {target}, which is not in the repository"
        assert "shared" not in target.split("/"), f"{page} links outside the repository: {target}"
