"""`review_code`: score a Python project's security and quality, each finding with its file
and line (so a failing review can be routed to the node that owns the file).

Security: `bandit` (static analysis, never runs the code) plus OWASP-style checks of our own
on the AST: injection sinks, hard-coded secrets, unsafe deserialisation, permissive CORS,
debug mode, endpoints taking untyped bodies. Quality: the code parses, public functions are
typed and documented, functions stay short, no bare `except`, no `print` in app code, and
tests exist. Tests are scored for quality only: `assert` and fixtures' fake secrets belong there.
"""

from __future__ import annotations

import ast
import asyncio
import logging
import re
from pathlib import Path
from typing import Any

from tools.builtin.app_tests import project_folder
from tools.registry import ToolContext, ToolError, tool

__all__ = ["review_code", "review_project"]

log = logging.getLogger(__name__)

PENALTY = {"high": 4, "medium": 2, "low": 1}
MAX_FUNCTION_LINES = 60
_SECRET_NAME = re.compile(r"(password|passwd|secret|api_?key|token|private_?key)", re.I)
_SQL = re.compile(r"\b(select|insert|update|delete)\b.+\b(from|into|set|where)\b", re.I | re.S)
_SKIP = {"__pycache__", ".venv", ".git", "node_modules"}


def _is_test(rel: str) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return name.startswith("test_") or name.endswith("_test.py") or name == "conftest.py" or "tests/" in f"/{rel}"


def _finding(file: str, node: ast.AST | int, rule: str, severity: str, message: str) -> dict[str, Any]:
    line = node if isinstance(node, int) else getattr(node, "lineno", 1)
    return {"file": file, "line": line, "rule": rule, "severity": severity, "message": message}


def _call_name(call: ast.Call) -> str:
    f = call.func
    parts = []
    while isinstance(f, ast.Attribute):
        parts.append(f.attr)
        f = f.value
    if isinstance(f, ast.Name):
        parts.append(f.id)
    return ".".join(reversed(parts))


def _kw(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_true(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _owasp(file: str, tree: ast.AST) -> list[dict[str, Any]]:
    """OWASP Top 10 style checks that bandit does not make, or makes without the web context."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = _call_name(node)
            if name in ("eval", "exec"):
                out.append(_finding(file, node, "A03-injection", "high", f"{name}() runs text as code"))
            elif name.endswith(".execute") and node.args and _built_string(node.args[0]):
                out.append(_finding(file, node, "A03-sql-injection", "high",
                                    "SQL built from strings; pass parameters to execute() instead"))
            elif name.endswith("add_middleware") and node.args and _call_name_of(node.args[0]) == "CORSMiddleware":
                origins = _kw(node, "allow_origins")
                wildcard = isinstance(origins, ast.List) and any(
                    isinstance(e, ast.Constant) and e.value == "*" for e in origins.elts)
                if wildcard and _is_true(_kw(node, "allow_credentials")):
                    out.append(_finding(file, node, "A05-cors", "high",
                                        "CORS allows any origin with credentials; list the allowed origins"))
            elif name in ("FastAPI", "fastapi.FastAPI") and _is_true(_kw(node, "debug")):
                out.append(_finding(file, node, "A05-debug", "medium", "debug=True leaks tracebacks to clients"))
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            value = node.value
            for t in targets:
                if isinstance(t, ast.Name) and _SECRET_NAME.search(t.id) and isinstance(value, ast.Constant) \
                        and isinstance(value.value, str) and len(value.value) >= 8:
                    out.append(_finding(file, node, "A07-hardcoded-secret", "high",
                                        f"{t.id} is a literal; read it from the environment"))
        elif isinstance(node, ast.JoinedStr) and _SQL.search("".join(
                v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str))):
            out.append(_finding(file, node, "A03-sql-injection", "medium", "SQL text built with an f-string"))
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and _is_endpoint(node):
            for arg in node.args.args:
                ann = ast.unparse(arg.annotation) if arg.annotation else ""
                if ann in ("dict", "Any", "typing.Any") or ann.startswith("dict["):
                    out.append(_finding(file, arg, "A04-unvalidated-input", "medium",
                                        f"{node.name}({arg.arg}: {ann}) takes an unvalidated body; "
                                        "declare a Pydantic model"))
    return out


def _built_string(node: ast.expr) -> bool:
    """An f-string, `%` or `+` expression, or a `.format()` call: text built from values."""
    return isinstance(node, ast.JoinedStr | ast.BinOp) or (
        isinstance(node, ast.Call) and _call_name(node).endswith(".format"))


def _call_name_of(node: ast.expr) -> str:
    return node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ""


def _is_endpoint(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    methods = {"get", "post", "put", "patch", "delete", "api_route"}
    return any(isinstance(d, ast.Call) and isinstance(d.func, ast.Attribute) and d.func.attr in methods
               for d in fn.decorator_list)


def _quality(file: str, tree: ast.Module, source: str, test: bool) -> list[dict[str, Any]]:
    out = []
    if not test and source.strip() and not ast.get_docstring(tree):
        out.append(_finding(file, 1, "Q-module-docstring", "low", "the module says nothing about itself"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ExceptHandler) and node.type is None:
            out.append(_finding(file, node, "Q-bare-except", "medium", "bare except hides every error"))
        elif isinstance(node, ast.Call) and _call_name(node) == "print" and not test:
            out.append(_finding(file, node, "Q-print", "low", "print() in app code; use logging"))
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                out.append(_finding(file, node, "Q-long-function", "low",
                                    f"{node.name} is {length} lines; split it (at most {MAX_FUNCTION_LINES})"))
            if test or node.name.startswith("_"):
                continue
            untyped = [a.arg for a in node.args.args if a.annotation is None and a.arg not in ("self", "cls")]
            if untyped or node.returns is None:
                what = f"parameters {', '.join(untyped)}" if untyped else "return value"
                out.append(_finding(file, node, "Q-untyped", "low", f"{node.name}: untyped {what}"))
    return out


def _bandit(root: Path, files: list[Path]) -> tuple[list[dict[str, Any]], str | None]:
    try:
        import bandit
        from bandit.core import config as b_config
        from bandit.core import manager as b_manager
    except ImportError:
        return [], None
    mgr = b_manager.BanditManager(b_config.BanditConfig(), "file", quiet=True)
    mgr.discover_files([str(f) for f in files], False)
    mgr.run_tests()
    out = []
    for issue in mgr.get_issue_list():
        sev = str(issue.severity).lower()
        out.append(_finding(Path(issue.fname).resolve().relative_to(root).as_posix(), issue.lineno,
                            f"bandit-{issue.test_id}", sev if sev in PENALTY else "low", issue.text))
    return out, bandit.__version__


def _score(findings: list[dict[str, Any]]) -> int:
    return max(0, 10 - sum(PENALTY[f["severity"]] for f in findings))


def review_project(root: Path, folder: Path) -> dict[str, Any]:
    """The review of every .py file under `folder`; finding files are relative to `root`."""
    files = sorted(p for p in folder.rglob("*.py") if not _SKIP & set(p.relative_to(folder).parts))
    if not files:
        raise ToolError(f"{folder.relative_to(root).as_posix()!r} holds no Python files to review")
    security: list[dict[str, Any]] = []
    quality: list[dict[str, Any]] = []
    app_files, tests = [], 0
    for path in files:
        rel = path.relative_to(root).as_posix()
        source = path.read_text(errors="replace")
        test = _is_test(path.relative_to(folder).as_posix())
        try:
            tree = ast.parse(source, filename=rel)
        except SyntaxError as exc:
            quality.append(_finding(rel, exc.lineno or 1, "Q-syntax", "high", f"does not parse: {exc.msg}"))
            continue
        if test:
            tests += sum(1 for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
                         and n.name.startswith("test"))
        else:
            app_files.append(path)
            security += _owasp(rel, tree)
        quality += _quality(rel, tree, source, test)
    if not tests:
        quality.append(_finding(folder.relative_to(root).as_posix(), 1, "Q-no-tests", "high", "no test functions"))
    found, version = _bandit(root, app_files) if app_files else ([], None)
    security += found
    return {
        "security": {"score": _score(security), "findings": security},
        "quality": {"score": _score(quality), "findings": quality},
        "files": len(files), "tests": tests,
        "bandit": version or "not installed: security is scored by the OWASP-style checks only",
        "summary": f"security {_score(security)}/10 ({len(security)} findings), "
                   f"quality {_score(quality)}/10 ({len(quality)} findings), {tests} tests",
    }


@tool
async def review_code(ctx: ToolContext, path: str = "project") -> dict[str, Any]:
    """Review a Python project: security (bandit and OWASP-style checks) and quality, each
    scored out of 10, every finding with its file, line, rule and severity.

    Args:
        path: The project's folder in the workspace.
    """
    root = ctx.workspace.resolve()
    folder = project_folder(root, path)
    return await asyncio.to_thread(review_project, root, folder)
