"""Import rules of the package: the core never touches ComfyUI, and the package imports itself relatively."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "protagonist"
PACKAGE_DIRS = ("core", "nodes", "sprites")
# ComfyUI's own top-level modules (its `nodes.py` included: only the package's *relative* `.nodes` is ours).
COMFY_MODULES = {"comfy", "comfy_api", "comfy_extras", "comfy_execution", "comfy_config", "folder_paths",
                 "server", "execution", "nodes", "node_helpers", "latent_preview", "app", "cuda_malloc"}


def _package_files() -> list[Path]:
    files = sorted(ROOT.glob("*.py"))
    for folder in PACKAGE_DIRS:
        files += sorted(p for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts)
    return files


def _module_package(path: Path) -> list[str]:
    """The dotted package a file's relative imports start from, as a list of parts."""
    parts = [PACKAGE] + list(path.relative_to(ROOT).parent.parts)
    return [p for p in parts if p]


def _imports(path: Path):
    """(line, absolute module name, level) of every import in `path`, relative ones resolved."""
    return list(_imports_in(path.read_text(encoding="utf-8"), _module_package(path), str(path)))


def _imports_in(source: str, package: list[str], filename: str = "<source>"):
    tree = ast.parse(source, filename=filename)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, 0
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                yield node.lineno, node.module or "", 0
                continue
            if node.level - 1 >= len(package):
                yield node.lineno, "<above the package>", node.level
                continue
            base = package[: len(package) - (node.level - 1)]
            if node.module:
                yield node.lineno, ".".join(base + node.module.split(".")), node.level
            else:
                for alias in node.names:
                    yield node.lineno, ".".join(base + [alias.name]), node.level
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant) \
                    and isinstance(node.args[0].value, str) and not node.args[0].value.startswith("."):
                yield node.lineno, node.args[0].value, 0


def test_package_files_are_found():
    names = {p.relative_to(ROOT).as_posix() for p in _package_files()}
    assert {"__init__.py", "core/interface.py", "core/sampling.py", "core/backends/sdxl.py"} <= names


def test_core_never_imports_comfyui():
    offenders = []
    for path in (ROOT / "core").rglob("*.py"):
        for line, name, level in _imports(path):
            top = name.split(".")[0]
            if level == 0 and (top in COMFY_MODULES or top.startswith("comfy")):
                offenders.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
            if name == f"{PACKAGE}.nodes" or name.startswith(f"{PACKAGE}.nodes."):
                offenders.append(f"{path.relative_to(ROOT)}:{line} imports the ComfyUI layer {name}")
    assert offenders == []


def test_package_imports_itself_relatively():
    offenders = []
    for path in _package_files():
        for line, name, level in _imports(path):
            if level == 0 and (name == PACKAGE or name.startswith(PACKAGE + ".")):
                offenders.append(f"{path.relative_to(ROOT)}:{line} imports {name} absolutely")
            if name == "<above the package>":
                offenders.append(f"{path.relative_to(ROOT)}:{line} imports above the package root")
    assert offenders == []


_PROBE = r"""
import importlib, importlib.abc, json, pkgutil, sys

BLOCKED = set(sys.argv[1].split(","))
attempts = []

class NoComfyUI(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        top = name.split(".")[0]
        if top in BLOCKED or top.startswith("comfy"):
            attempts.append(name)
            raise ModuleNotFoundError(f"No module named {name!r} (ComfyUI is absent)", name=name)
        return None

sys.meta_path.insert(0, NoComfyUI())
import protagonist, protagonist.core
imported = ["protagonist", "protagonist.core"]
for info in pkgutil.walk_packages(protagonist.core.__path__, "protagonist.core."):
    importlib.import_module(info.name)
    imported.append(info.name)
comfy = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED or m.startswith("comfy"))
print(json.dumps({"attempts": attempts, "comfy": comfy, "imported": imported,
                  "file": protagonist.__file__}))
"""


def test_import_without_comfyui(tmp_path):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p and Path(p).exists())
    env["HF_HUB_OFFLINE"] = "1"
    result = subprocess.run([sys.executable, "-c", _PROBE, ",".join(sorted(COMFY_MODULES))], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["attempts"] == []
    assert report["comfy"] == []
    assert Path(report["file"]).resolve() == (ROOT / "__init__.py").resolve()
    assert {"protagonist.core.interface", "protagonist.core.sampling", "protagonist.core.backends.sdxl",
            "protagonist.core.backends.flux", "protagonist.core.backends.loading"} <= set(report["imported"])


@pytest.mark.parametrize("source, expected", [
    ("from . import x, y", ["protagonist.core.backends.x", "protagonist.core.backends.y"]),
    ("from ..interface import A", ["protagonist.core.interface"]),
    ("from ...nodes.extension import E", ["protagonist.nodes.extension"]),
    ("from .... import z", ["<above the package>"]),
    ("import comfy.model_management", ["comfy.model_management"]),
    ("from protagonist.core import schedules", ["protagonist.core"]),
    ("def f():\n    import folder_paths", ["folder_paths"]),
    ("importlib.import_module('comfy_api.latest')", ["comfy_api.latest"]),
])
def test_import_scanner_resolves_names(source, expected):
    """The scanner itself, for a file in core/backends/: nested and relative imports are resolved."""
    assert [name for _, name, _ in _imports_in(source, ["protagonist", "core", "backends"])] == expected


def test_every_subpackage_is_listed_in_pyproject():
    import tomllib

    root = Path(__file__).resolve().parents[2]
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {"protagonist"} | {
        "protagonist." + ".".join(init.parent.relative_to(root).parts)
        for init in root.glob("**/__init__.py")
        if init.parent != root and not init.parent.relative_to(root).parts[0].startswith((".", "tests", "runs", "out"))
    }
    assert found == listed


def test_test_module_names_are_unique():
    """Test folders are not packages, so pytest needs every test file name to be unique."""
    root = Path(__file__).resolve().parents[1]
    names = [p.name for p in root.glob("*/test_*.py") if not (p.parent / "__init__.py").exists()]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
