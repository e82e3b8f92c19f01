"""The import arrows of the README's architecture section, checked on every file's ``import`` statements.

graphc -> passes, graphc -> runtime; runtime -> passes.names only (a constants module); passes -> nothing
of ours. The one documented exception: the CLI dispatches lazily into graphc and passes (its
``module:function`` handlers and ``graphc optimize``), listed in ``CLI_DISPATCH``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("graphc", "passes", "runtime")
# What each package may import of the others (module names, or a package meaning "anything in it").
ALLOWED = {
    "graphc": {"graphc", "passes", "runtime"},
    "passes": {"passes"},
    "runtime": {"runtime", "passes.names"},
}
CLI_DISPATCH = {"runtime/cli.py", "runtime/cli_optimize.py"}  # lazy hand-over to graphc / passes handlers


def imported_modules(source: str) -> list[str]:
    """Every absolute module name ``source`` imports (``from passes import names`` counts as ``passes.names``)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                raise AssertionError(f"relative import 'from {'.' * node.level}{node.module or ''}': use absolute ones")
            found += [f"{node.module}.{alias.name}" for alias in node.names] if node.module in PACKAGES \
                else [node.module]
    return found


def _allowed(module: str, allowed: set[str]) -> bool:
    return any(module == a or module.startswith(a + ".") for a in allowed)


def violations(package: str, source: str) -> list[str]:
    """Modules of ours that a file of ``package`` imports against the arrows."""
    ours = [m for m in imported_modules(source) if m.split(".")[0] in PACKAGES]
    return [m for m in ours if not _allowed(m, ALLOWED[package])]


def _files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_point_one_way(package):
    bad = {}
    for path in _files(package):
        relative = path.relative_to(ROOT).as_posix()
        if relative in CLI_DISPATCH:
            continue
        found = violations(package, path.read_text(encoding="utf-8"))
        if found:
            bad[relative] = found
    assert not bad, f"imports against the arrows (see README, Architecture): {bad}"


def test_names_module_is_constants_only():
    """runtime may import passes.names because it pulls nothing in: no imports, only string constants."""
    tree = ast.parse((ROOT / "passes" / "names.py").read_text(encoding="utf-8"))
    body = [n for n in tree.body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
    assert body and all(isinstance(n, ast.Assign) for n in body), [ast.dump(n)[:60] for n in body]
    for node in body:
        assert isinstance(node.value, ast.Constant) and isinstance(node.value.value, str), ast.unparse(node)
    # importing passes.names runs passes/__init__.py first: it must import nothing either
    assert imported_modules((ROOT / "passes" / "__init__.py").read_text(encoding="utf-8")) == []


def test_cli_dispatch_exception_is_lazy():
    """The listed CLI files reach graphc/passes only inside functions or by name, never at import time."""
    for relative in CLI_DISPATCH:
        tree = ast.parse((ROOT / relative).read_text(encoding="utf-8"))
        top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        top_level = [m for n in top for m in imported_modules(ast.unparse(n))]
        assert not [m for m in top_level if not _allowed(m, ALLOWED["runtime"]) and m.split(".")[0] in PACKAGES], \
            relative


@pytest.mark.parametrize("package, source, expected", [
    ("passes", "import graphc.tensor\n", ["graphc.tensor"]),
    ("passes", "def f():\n    from runtime.providers import CPU\n", ["runtime.providers"]),
    ("runtime", "from passes import names, optimizers\n", ["passes.optimizers"]),
    ("runtime", "from passes.training_step import UPDATED\n", ["passes.training_step"]),
    ("runtime", "from graphc import Tensor\n", ["graphc.Tensor"]),
    ("runtime", "from passes.names import UPDATED\nimport numpy\n", []),
    ("graphc", "from runtime.cli import main\nfrom passes.extract import extract_model\n", []),
])
def test_checker_flags_what_it_should(package, source, expected):
    assert violations(package, source) == expected
