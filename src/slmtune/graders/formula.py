"""A multi grader's ``calculate_output``: arithmetic over the sub-graders' rewards, parsed by Python's own parser
(``ast``) and walked here over a short list of allowed nodes — never ``eval``. ``^`` is power, as in OpenAI's docs.

Allowed: numbers, the sub-graders' names, ``+ - * / ^`` (and ``**``), unary minus, parentheses, and the functions
``min max abs floor ceil exp sqrt log``. Anything else (attributes, subscripts, other names, keywords) is refused
when the grader is checked, with the offending piece named.
"""

from __future__ import annotations

import ast
import math

FUNCTIONS = {"min": min, "max": max, "abs": abs, "floor": math.floor, "ceil": math.ceil, "exp": math.exp,
             "sqrt": math.sqrt, "log": math.log}
_BINARY = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
           ast.Div: lambda a, b: a / b, ast.Pow: lambda a, b: a ** b}
MAX_DEPTH = 64


class FormulaError(ValueError):
    pass


def parse(text: str, names: set[str]) -> ast.Expression:
    """The formula's tree, checked: every node allowed, every name a sub-grader's. Raises FormulaError."""
    try:  # `^` is power here (and binds like it): read as `**`; a formula holds no strings for it to appear in
        tree = ast.parse(text.strip().replace("^", "**"), mode="eval")
    except SyntaxError as e:
        raise FormulaError(f"calculate_output: not a formula ({e.msg} at column {e.offset})") from None
    _check(tree.body, names, 0)
    return tree


def _check(node, names: set[str], depth: int) -> None:
    if depth > MAX_DEPTH:
        raise FormulaError("calculate_output: nested too deeply")
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return
    if isinstance(node, ast.Name):
        if node.id not in names:
            raise FormulaError(f"calculate_output: {node.id!r} is not one of the graders ({', '.join(sorted(names))})")
        return
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        _check(node.left, names, depth + 1)
        _check(node.right, names, depth + 1)
        return
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        _check(node.operand, names, depth + 1)
        return
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS \
            and not node.keywords and node.args:
        for a in node.args:
            _check(a, names, depth + 1)
        return
    piece = ast.unparse(node) if hasattr(ast, "unparse") else type(node).__name__
    raise FormulaError(f"calculate_output: {piece!r} is not allowed (numbers, grader names, + - * / ^, parentheses "
                       f"and {', '.join(FUNCTIONS)})")


def evaluate(tree: ast.Expression, values: dict[str, float]) -> float:
    """The formula's value for the sub-rewards ``values``. Raises FormulaError on a math error (division by zero,
    log of a negative, an overflow)."""
    try:
        return float(_eval(tree.body, values))
    except (ArithmeticError, ValueError, TypeError) as e:
        raise FormulaError(f"calculate_output: {type(e).__name__}: {e}") from None


def _eval(node, values):
    if isinstance(node, ast.Constant):
        return float(node.value)
    if isinstance(node, ast.Name):
        return float(values[node.id])
    if isinstance(node, ast.BinOp):
        left, right = _eval(node.left, values), _eval(node.right, values)
        if isinstance(node.op, ast.Pow) and abs(right) > 1024:
            raise OverflowError("exponent too large")
        out = _BINARY[type(node.op)](left, right)
        if isinstance(out, complex):
            raise ValueError("complex result")
        return out
    if isinstance(node, ast.UnaryOp):
        v = _eval(node.operand, values)
        return -v if isinstance(node.op, ast.USub) else v
    return FUNCTIONS[node.func.id](*[_eval(a, values) for a in node.args])
