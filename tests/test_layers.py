"""The code's floors import one way (src/tuneforge/README.md): a module imports only floors below its own, so
there is no import cycle between packages or top-level modules; config.py imports nothing of tuneforge but its
errors, and reading a config loads no torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "tuneforge"

# Lowest first. A package or top-level module may import the ones on lower floors only (never its own floor's
# neighbours: eval/ never imports train/, jobs/ never experiments/).
FLOORS = [
    {"tuneforge", "errors", "progress"},
    {"config"},
    {"settings", "rundir"},
    {"ops"},
    {"data"},
    {"models"},
    {"methods"},
    {"train", "eval", "export"},
    {"recipes"},
    {"experiments", "jobs"},
    {"serve"},
    {"api"},
    {"cli"},
]
FLOOR = {unit: k for k, units in enumerate(FLOORS) for unit in units}


def unit_of(module: str) -> str:
    """tuneforge.train.loop -> train, tuneforge.config -> config, tuneforge -> tuneforge."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every tuneforge module `path` imports, at the top or inside a function."""
    out: set[str] = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "tuneforge"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + [base]
                ).strip(".")
            if base.split(".")[0] != "tuneforge":
                continue
            for a in node.names:  # `from tuneforge import api` imports the module tuneforge.api
                sub = f"{base}.{a.name}"
                found = (SRC.parent / sub.replace(".", "/")).with_suffix(".py").is_file()
                out.add(sub if found or (SRC.parent / sub.replace(".", "/")).is_dir() else base)
    return out


def edges() -> dict[str, set[str]]:
    return {module_name(p): imports(p) for p in sorted(SRC.rglob("*.py"))}


def test_every_package_and_top_level_module_has_a_floor():
    units = {unit_of(m) for m in edges()}
    assert units <= set(FLOOR), (
        f"place these in FLOORS (and in src/tuneforge/README.md): {units - set(FLOOR)}"
    )


def test_imports_go_down_only():
    wrong = []
    for module, targets in edges().items():
        a = unit_of(module)
        for t in targets:
            b = unit_of(t)
            if b != a and FLOOR.get(b, 99) >= FLOOR.get(a, -1):
                wrong.append(f"{module} imports {t} ({b} is not below {a})")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_cycle_between_packages_or_top_level_modules():
    graph: dict[str, set[str]] = {}
    for module, targets in edges().items():
        a = unit_of(module)
        graph.setdefault(a, set()).update(unit_of(t) for t in targets if unit_of(t) != a)
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path, node, nxt]
            if state.get(nxt) is None and (cycle := visit(nxt, [*path, node])):
                return cycle
        state[node] = 2
        return None

    for unit in sorted(graph):
        if state.get(unit) is None:
            cycle = visit(unit, [])
            assert cycle is None, " -> ".join(cycle)


def test_config_imports_only_errors():
    assert imports(SRC / "config.py") == {"tuneforge.errors"}


def test_reading_a_config_loads_no_torch(tmp_path):
    """The schema, the service's settings and the run folder's layout are leaves: no torch, no methods."""
    code = (
        "import sys, tuneforge.config, tuneforge.settings, tuneforge.rundir\n"
        "from tuneforge.config import RunConfig\n"
        "RunConfig.model_validate({'data': {'train': 'x.jsonl'}, 'method': {'name': 'lora', 'r': 8}})\n"
        "print(sorted(m for m in ('torch', 'transformers', 'tuneforge.methods') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
