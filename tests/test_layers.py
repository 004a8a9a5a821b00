"""The package is layered: each subpackage imports only the ones below it, and no module takes part in
an import circle. Read from the source (ast), so lazy imports inside functions count too."""
import ast
from pathlib import Path

import apb_ref

ROOT = Path(apb_ref.__file__).parent
# bottom to top; a module may import its own layer and any layer listed before it
LAYERS = ["fileio", "schema", "autograd", "ops", "nn", "kernels", "quant", "models", "data", "training", "packed",
          "testing", "sweep", "bench", "cli", "__main__"]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(("apb_ref",) + (parts[:-1] if parts[-1] == "__init__" else parts))


def imports_of(path: Path) -> set[str]:
    """apb_ref modules imported by one file (absolute names; `from . import x` resolved)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("apb_ref")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            if not base.startswith("apb_ref"):
                continue
            for alias in node.names:  # `from pkg import module` imports the module
                sub = f"{base}.{alias.name}"
                found.add(sub if (ROOT.parent / sub.replace(".", "/")).with_suffix(".py").exists()
                          or (ROOT.parent / sub.replace(".", "/")).is_dir() else base)
    return found - {name}


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in ROOT.rglob("*.py")}


def layer_of(module: str) -> int:
    top = module.split(".")[1] if module.count(".") else ""
    return LAYERS.index(top)


def test_every_module_belongs_to_a_layer():
    for module in graph():
        if module != "apb_ref":
            assert module.split(".")[1] in LAYERS, f"{module} is in no layer of {LAYERS}"


def test_imports_point_down_the_layers():
    wrong = [f"{m} imports {t}" for m, targets in graph().items() if m != "apb_ref"
             for t in targets if t != "apb_ref" and layer_of(t) > layer_of(m)]
    assert not wrong, "imports that point up the layers:\n" + "\n".join(sorted(wrong))


def test_no_import_circles():
    g = graph()
    # a package's __init__ re-exporting its modules is not a circle with them
    edges = {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in g.items()}
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(m, stack):
        state[m] = 1
        for t in sorted(edges.get(m, ())):
            if state.get(t) == 1:
                cycle.extend(stack[stack.index(t):] + [t])
                return True
            if state.get(t) is None and visit(t, stack + [t]):
                return True
        state[m] = 2
        return False

    for m in sorted(edges):
        if state.get(m) is None and visit(m, [m]):
            break
    assert not cycle, "import circle: " + " -> ".join(cycle)


def test_the_walker_sees_an_upward_import(tmp_path):
    """The check can fail: an ops module importing training is reported."""
    bad = ROOT / "ops" / "_tmp_upward.py"
    bad.write_text("from ..training import config\n")
    try:
        assert any(layer_of(t) > layer_of("apb_ref.ops._tmp_upward") for t in imports_of(bad))
    finally:
        bad.unlink()
