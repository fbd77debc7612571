"""`bundle_app`: package a generated web API as a zip (source tree, tests, Dockerfile, README).

Files the agents did not write are added from the project itself: requirements.txt pins the
third-party packages the code imports at the versions the tests ran with, pytest.ini makes
`pytest` work from the project root, the Dockerfile serves `app.main:app` with uvicorn as a
non-root user, and the README lists the contract's operations. The zip is deterministic, so
a re-run of this node writes the same bytes.
"""

from __future__ import annotations

import ast
import asyncio
import hashlib
import io
import sys
import zipfile
from importlib import metadata
from pathlib import Path
from typing import Any

from tools.builtin.app_tests import project_folder, zip_folder
from tools.builtin.files import write_atomically
from tools.builtin.openapi_contract import check_contract
from tools.registry import ToolContext, ToolError, tool
from tools.workspace import resolve_inside

__all__ = ["bundle_app"]

SERVER = ["uvicorn"]  # what the Dockerfile runs, whatever the code imports
TEST_TOOLS = ["pytest", "httpx"]  # fastapi.testclient needs httpx

DOCKERFILE = """\
FROM python:{py}-slim
WORKDIR /srv
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY . .
RUN useradd --create-home --uid 10001 api && chown -R api /srv
USER api
EXPOSE 8000
CMD ["uvicorn", "{module}:app", "--host", "0.0.0.0", "--port", "8000"]
"""


def _imports(folder: Path) -> set[str]:
    names = set()
    for p in folder.rglob("*.py"):
        try:
            tree = ast.parse(p.read_text(errors="replace"))
        except SyntaxError:
            continue
        for n in ast.walk(tree):
            if isinstance(n, ast.Import):
                names |= {a.name.split(".")[0] for a in n.names}
            elif isinstance(n, ast.ImportFrom) and n.module and not n.level:
                names.add(n.module.split(".")[0])
    local = {p.name for p in folder.iterdir() if p.is_dir()} | {p.stem for p in folder.glob("*.py")}
    return names - set(sys.stdlib_module_names) - local


def requirements(folder: Path) -> list[str]:
    """`dist==version` for each third-party import, the server and the test tools."""
    dists = metadata.packages_distributions()
    wanted = {d for name in _imports(folder) for d in dists.get(name, [name])} | set(SERVER) | set(TEST_TOOLS)
    pinned = []
    for dist in sorted(wanted, key=str.lower):
        try:
            pinned.append(f"{dist}=={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            pinned.append(dist)  # not installed here: the tests could not have used it
    return pinned


def _readme(title: str, contract: dict[str, Any] | None, module: str) -> str:
    ops = "\n".join(f"- `{o['method']} {o['path']}`: {o['summary'] or o['operation_id']}"
                    for o in (contract or {}).get("operations", []))
    return f"""# {title}

{(contract or {}).get("document", {}).get("info", {}).get("description", "").strip()}

## Endpoints

{ops or "See openapi.yaml."}

The contract is `openapi.yaml`; the running service also serves it at `/openapi.json`.

## Run

    pip install -r requirements.txt
    uvicorn {module}:app --port 8000

## Test

    pytest

## Docker

    docker build -t api .
    docker run -p 8000:8000 api
"""


def build_bundle(root: Path, folder: Path, name: str, title: str) -> dict[str, Any]:
    if not (folder / "app" / "main.py").is_file():
        raise ToolError(f"{folder.relative_to(root).as_posix()}/app/main.py is missing; the app must define "
                        "`app` there (module app.main)")
    module = "app.main"
    contract = None
    spec = folder / "openapi.yaml"
    if spec.is_file():
        contract = check_contract(spec.read_text(errors="replace"), "openapi.yaml")
    added = []
    generated = {
        "requirements.txt": lambda: "\n".join(requirements(folder)) + "\n",
        "pytest.ini": lambda: "[pytest]\npythonpath = .\ntestpaths = tests\n",
        "Dockerfile": lambda: DOCKERFILE.format(py=f"{sys.version_info.major}.{sys.version_info.minor}",
                                                module=module),
        "README.md": lambda: _readme(title or (contract or {}).get("title", "Web API"), contract, module),
        "app/__init__.py": lambda: "",
    }
    for rel, make in generated.items():
        if not (folder / rel).exists():
            write_atomically(folder / rel, make().encode())
            added.append(rel)
    data = zip_folder(folder)
    target = resolve_inside(root, name)
    write_atomically(target, data)
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        entries = z.namelist()
    return {"bundle": target.relative_to(root).as_posix(), "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(), "files": entries, "added": added}


@tool
async def bundle_app(ctx: ToolContext, path: str = "project", name: str = "app.zip", title: str = "") -> dict[str, Any]:
    """Package a FastAPI project (app/main.py, tests/, openapi.yaml) as a zip with a Dockerfile,
    README, requirements.txt and pytest.ini (each added only if the project lacks it).

    Args:
        path: The project's folder in the workspace.
        name: The zip file to write in the workspace.
        title: The README's title (default: the contract's title).
    """
    if not name.endswith(".zip"):
        raise ToolError(f"name {name!r} must end with .zip")
    root = ctx.workspace.resolve()
    folder = project_folder(root, path)
    return await asyncio.to_thread(build_bundle, root, folder, name, title)
