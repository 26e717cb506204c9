"""Imports only point down the layers listed in sarf_jax/__init__.py's docstring, and no two
packages import each other (directly or through others)."""

import ast
import pathlib
import re

import pytest

import sarf_jax

PACKAGE = pathlib.Path(sarf_jax.__file__).parent


def layer_table() -> dict[str, int]:
    """{top-level name under sarf_jax: layer number}, read from the package docstring."""
    rows = re.findall(r"^\s*(\d+)\. (.+)$", sarf_jax.__doc__, flags=re.MULTILINE)
    assert rows, "sarf_jax/__init__.py's docstring lists no layers ('    1. ops' ...)"
    return {name.strip(): int(number) for number, names in rows for name in names.split(",")}


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    relative = pathlib.Path(*name.split(".")[1:]) if "." in name else pathlib.Path()
    return (PACKAGE / relative).with_suffix(".py").is_file() or (PACKAGE / relative / "__init__.py").is_file()


def imported_modules(source: str, importer: str, is_package: bool):
    """(line, module) for every import of a sarf_jax module in `source`, at any depth; `from X
    import name` counts as importing X.name when that is a module."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = importer.split(".")[: len(importer.split(".")) - node.level + is_package]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}" if is_module(f"{base}.{alias.name}") else base


def layer_of(module: str, table: dict[str, int]) -> int:
    """The layer of a sarf_jax module; the package itself is on top."""
    if module == "sarf_jax":
        return max(table.values()) + 1
    top = module.split(".")[1]
    if top not in table:
        raise AssertionError(f"sarf_jax.{top} is in no layer: add it to the list in sarf_jax/__init__.py")
    return table[top]


def upward_imports(path: pathlib.Path, source: str, table: dict[str, int]) -> list[str]:
    importer = module_name(path)
    own = layer_of(importer, table)
    found = []
    for line, module in imported_modules(source, importer, path.name == "__init__.py"):
        if (module == "sarf_jax" or module.startswith("sarf_jax.")) and layer_of(module, table) > own:
            found.append(
                f"{path.relative_to(PACKAGE.parent)}:{line} imports {module} "
                f"(layer {layer_of(module, table)}) from layer {own}"
            )
    return found


SOURCES = sorted(PACKAGE.rglob("*.py"))


def test_no_module_imports_a_higher_layer():
    table = layer_table()
    upward = [found for path in SOURCES for found in upward_imports(path, path.read_text(), table)]
    assert not upward, "imports pointing up a layer:\n" + "\n".join(upward)


def test_no_two_packages_import_each_other():
    """Within a layer too: the graph of sarf_jax's top-level packages has no cycle."""
    table = layer_table()
    edges: dict[str, set[str]] = {}
    for path in SOURCES:
        importer = module_name(path)
        if importer == "sarf_jax":
            continue
        for _, module in imported_modules(path.read_text(), importer, path.name == "__init__.py"):
            if module.startswith("sarf_jax.") and module.split(".")[1] != importer.split(".")[1]:
                edges.setdefault(importer.split(".")[1], set()).add(module.split(".")[1])

    def reaches(start, goal, seen=()):
        return any(n == goal or (n not in seen and reaches(n, goal, (*seen, n))) for n in edges.get(start, ()))

    cycles = sorted(name for name in table if reaches(name, name))
    assert not cycles, f"packages on an import cycle: {cycles} (imports: {edges})"


@pytest.mark.parametrize(
    "relative, source, expected",
    [
        (
            "models/vit.py",
            "def f():\n    from sarf_jax.train import loop\n",
            "models/vit.py:2 imports sarf_jax.train.loop",
        ),
        ("reduction/spec.py", "from sarf_jax import evaluate\n", "reduction/spec.py:1 imports sarf_jax.evaluate"),
        ("ops/__init__.py", "from ..nn import conv\n", "ops/__init__.py:1 imports sarf_jax.nn.conv"),
        ("nn/mamba.py", "import sarf_jax\n", "nn/mamba.py:1 imports sarf_jax "),
    ],
)
def test_an_upward_import_is_reported_with_file_line_and_module(relative, source, expected):
    found = upward_imports(PACKAGE / relative, source, layer_table())
    assert len(found) == 1 and found[0].startswith("sarf_jax/" + expected), found


def test_downward_and_same_layer_imports_pass():
    source = "from sarf_jax import data, parallel\nfrom sarf_jax.models.registry import create\nfrom . import sharded\n"
    assert upward_imports(PACKAGE / "evaluate" / "sweep.py", source, layer_table()) == []


def test_importing_the_package_does_not_start_a_jax_backend():
    """Multi-process runs call jax.distributed.initialize after importing sarf_jax, which fails once
    any import has asked for a backend (e.g. a class-level default resolving scan_impl="auto")."""
    import subprocess
    import sys

    program = (
        "import pkgutil, importlib, sarf_jax\n"
        "for m in pkgutil.walk_packages(sarf_jax.__path__, 'sarf_jax.'):\n"
        "    if not m.name.endswith('__main__'):\n"
        "        importlib.import_module(m.name)\n"
        "from jax._src import xla_bridge\n"
        "assert not xla_bridge.backends_are_initialized(), 'an import started a JAX backend'\n"
    )
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
