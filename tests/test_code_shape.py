"""The shape the layers issue set: no function in ``packages/`` over 60 lines (``def`` to its
last line), and a command is its options, its docstring and a short body that calls into
``adcore.run`` (at most 40 lines after the docstring)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_FUNCTION_LINES = 60
MAX_COMMAND_BODY_LINES = 40


def functions(path: Path) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    tree = ast.parse(path.read_text(), filename=str(path))
    kinds = (ast.FunctionDef, ast.AsyncFunctionDef)
    return [node for node in ast.walk(tree) if isinstance(node, kinds)]


def body_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines after the docstring (or after the signature when there is none)."""
    first = node.body[0]
    has_docstring = isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
    start = first.end_lineno + 1 if has_docstring else first.lineno
    return node.end_lineno - start + 1


def test_no_function_is_over_60_lines():
    long = [
        f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({length} lines)"
        for path in sorted(ROOT.glob("packages/*/src/**/*.py"))
        for node in functions(path)
        if (length := node.end_lineno - node.lineno + 1) > MAX_FUNCTION_LINES
    ]
    assert long == [], "split these functions:\n" + "\n".join(long)


def test_commands_only_parse_and_call_into_run():
    cli = ROOT / "packages/adcore/src/adcore/cli"
    commands = [
        (path, node)
        for path in sorted(cli.glob("*_cmd.py"))
        for node in functions(path)
        if node.col_offset == 0 and not node.name.startswith("_")
        and ast.get_docstring(node) and any(a.annotation for a in node.args.args)
    ]  # fmt: skip
    assert len(commands) >= 9, [n.name for _, n in commands]
    long = [
        f"{path.name}:{node.lineno} {node.name} ({body_lines(node)} lines)"
        for path, node in commands
        if body_lines(node) > MAX_COMMAND_BODY_LINES
    ]
    assert long == [], "move the flow of these commands into adcore.run:\n" + "\n".join(long)


def test_the_line_counts_are_the_ones_meant():
    source = 'def f(a):\n    """Doc."""\n    x = 1\n    return x\n'
    (node,) = ast.parse(source).body
    assert node.end_lineno - node.lineno + 1 == 4
    assert body_lines(node) == 2
