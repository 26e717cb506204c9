"""The package stays readable in pieces: modules of at most ~400 lines and functions of at most 60
(docstrings not counted). Exempt: the Pallas kernels (one kernel is one long program) and
constructors (their length is their argument list)."""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "sarf_jax"
KERNEL_MODULES = ("scan_pallas_tpu.py", "scan_pallas_gpu.py")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def _modules():
    return sorted(path for path in PACKAGE.rglob("*.py") if path.name not in KERNEL_MODULES)


def _code_lines(function: ast.FunctionDef) -> int:
    lines = function.end_lineno - function.lineno + 1
    first = function.body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        lines -= first.end_lineno - first.lineno + 1
    return lines


def test_modules_are_at_most_400_lines():
    long = {
        str(p.relative_to(PACKAGE)): n for p in _modules() if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not long, f"modules over {MAX_MODULE_LINES} lines (split them by idea): {long}"


def test_functions_are_at_most_60_lines():
    long = {}
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name != "__init__":
                if (lines := _code_lines(node)) > MAX_FUNCTION_LINES:
                    long[f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name}"] = lines
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines without their docstring: {long}"


def test_the_rule_sees_a_long_function():
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    function = ast.parse(f'def f():\n    """doc\n    more"""\n{body}\n').body[0]
    assert _code_lines(function) == MAX_FUNCTION_LINES + 1
