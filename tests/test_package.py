"""The shape of the package: one import name, imports one way, no cycles, small pieces.

``traces → profiles → calibrate → replay → validate``: a sub-package imports only the
ones to its left (and itself); nothing imports ``mist.validate`` but the tests. These
tests read the source (AST), so they hold for imports inside functions too.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAYERS = ("traces", "profiles", "calibrate", "replay", "validate")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def _modules() -> dict[str, Path]:
    """``mist.<layer>.<...>`` -> source file, for every module of the five layers."""
    out = {"mist": REPO / "__init__.py", "mist.__main__": REPO / "__main__.py"}
    for layer in LAYERS:
        for path in sorted((REPO / layer).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(("mist", *parts))] = path
    return out


MODULES = _modules()


def _imports(path: Path) -> set[str]:
    """Every ``mist...`` module a file imports, at any depth of the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            base = node.module
            names = [f"{base}.{a.name}" for a in node.names]
            found.update(n for n in names if n in MODULES)
            found.add(base)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m == "mist" or m.startswith("mist.")}


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


def test_no_top_level_names_but_mist():
    tops = {"traces", "profiles", "calibrate", "replay", "validate"}
    for path in MODULES.values():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                assert node.module.split(".")[0] not in tops, f"{path}: imports {node.module} (use mist.{node.module})"
            elif isinstance(node, ast.Import):
                for a in node.names:
                    assert a.name.split(".")[0] not in tops, f"{path}: imports {a.name}"


def test_imports_go_one_way():
    wrong = []
    for module, path in MODULES.items():
        own = _layer(module)
        if own is None:
            continue
        for target in _imports(path):
            other = _layer(target)
            if other is not None and other > own:
                wrong.append(f"{path.relative_to(REPO)} imports {target}")
    assert not wrong, "imports against the one-way rule:\n" + "\n".join(wrong)


def test_no_import_cycles():
    graph = {}
    for module, path in MODULES.items():
        deps = {t for t in _imports(path) if t in MODULES and t != module}
        # a module imports its packages' __init__ first; that is not a cycle of ours
        graph[module] = {d for d in deps if not module.startswith(d + ".")}
    try:
        tuple(TopologicalSorter(graph).static_order())
    except CycleError as exc:
        pytest.fail(f"import cycle: {' -> '.join(exc.args[1])}")


def test_every_package_folder_is_installed():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert config["package-dir"] == {"mist": "."}
    on_disk = {"mist"} | {
        ".".join(("mist", *p.parent.relative_to(REPO).parts))
        for layer in LAYERS for p in (REPO / layer).rglob("__init__.py")
    }
    assert set(config["packages"]) == on_disk


def test_modules_and_functions_stay_small():
    big = []
    for path in MODULES.values():
        lines = path.read_text().count("\n")
        if lines > MAX_MODULE_LINES:
            big.append(f"{path.relative_to(REPO)}: {lines} lines")
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    big.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}: {n} lines")
    assert not big, f"over {MAX_MODULE_LINES} lines a module or {MAX_FUNCTION_LINES} a function:\n" + "\n".join(big)


def test_cli_runs_stay_thin():
    long = []
    for path in sorted((REPO / "validate" / "cli").glob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef) and node.name == "run" and node.end_lineno - node.lineno + 1 > 40:
                long.append(f"{path.name}: run is {node.end_lineno - node.lineno + 1} lines")
    assert not long, "\n".join(long)


def test_python_dash_m_mist_is_the_command_line():
    done = subprocess.run([sys.executable, "-m", "mist", "--help"], capture_output=True, text=True, cwd="/")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: mist ")


def test_import_mist_exposes_every_job():
    import mist

    for name in mist.__all__:
        assert getattr(mist, name) is not None, name
    assert callable(mist.validate_run) and mist.ValidateSettings.__dataclass_params__.frozen
