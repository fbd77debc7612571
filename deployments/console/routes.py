"""Console pages: sign in/out, the tasks list and its New task form, the task page, artifact
previews, and the static assets. State-changing forms carry the session's CSRF token; the
pages' JavaScript calls the `/v1` API with the session cookie and the X-CSRF-Token header."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import yaml
from fastapi import APIRouter, Form, Request
from starlette.datastructures import UploadFile
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError

from deployments.auth import (ACT_COOKIE, SESSION_COOKIE, TENANT_PATTERN, Principal, same_origin,
                              session_principal)
from deployments.backend import Backend, BackendDep
from deployments.console.listing import EVERY_TENANT, Listing, task_rows, tenants
from deployments.console.plan_form import node_of, outline, parse_plan
from deployments.console.preview import preview
from deployments.console.system import health_entry, links, models, queue_by_tenant, recent_errors
from deployments.problems import Problem
from deployments.routes.tasks import TaskCreate, submit_task
from memory.access import Role
from troupe.models import TaskStatus, utcnow
from troupe.reducer import reduce

__all__ = ["router"]

router = APIRouter(include_in_schema=False)
_HERE = Path(__file__).parent
_STATIC = _HERE / "static"
templates = Jinja2Templates(directory=_HERE / "templates")
SESSION_TTL = timedelta(hours=12)
# The pages load only this server's scripts and styles; artifacts can never run script here.
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; script-src 'self'; style-src 'self'; "
                               "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def _page(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    return templates.TemplateResponse(request, name, context, status_code=status_code, headers=_HEADERS)


async def _who(request: Request) -> Principal | None:
    try:
        return await session_principal(request)
    except Problem:
        return None


def _to_signin() -> RedirectResponse:
    return RedirectResponse("/console/signin", status_code=303)


async def _form_sender(request: Request, csrf: str) -> Principal | Response:
    """Who posted a console form: signed out goes to sign-in; a missing CSRF token is a 403."""
    try:
        return await session_principal(request, csrf_token=csrf)
    except Problem as exc:
        if exc.status == 401:
            return _to_signin()
        raise


def _https(request: Request) -> bool:
    return request.url.scheme == "https" or request.headers.get("x-forwarded-proto", "").lower() == "https"


@router.get("/")
@router.get("/console")
async def home(request: Request) -> RedirectResponse:
    return RedirectResponse("/console/tasks" if await _who(request) else "/console/signin", status_code=303)


@router.get("/console/signin")
async def signin_form(request: Request) -> Response:
    return _page(request, "signin.html", who=None)


@router.post("/console/signin")
async def signin(request: Request, backend: BackendDep, key: Annotated[str, Form()] = "") -> Response:
    if not same_origin(request):  # login CSRF: another site must not sign a browser in as someone
        return _page(request, "signin.html", 403, who=None, error="This sign-in did not come from this site.")
    key = key.strip()
    if not key:
        return _page(request, "signin.html", 422, who=None, error="Paste an API key (it starts with trp_).")
    try:
        key_id, _, _ = await backend.auth.identify(key)
    except Problem as exc:
        return _page(request, "signin.html", 401, who=None, error=exc.detail)
    if key_id.startswith("oidc:"):
        return _page(request, "signin.html", 422, who=None,
                     error="The console signs in with API keys; an OIDC token cannot start a session.")
    session_id, session = await backend.access.create_session(key_id, SESSION_TTL)
    response = RedirectResponse("/console/tasks", status_code=303)
    response.set_cookie(SESSION_COOKIE, session_id, max_age=int((session.expires_at - utcnow()).total_seconds()),
                        path="/", httponly=True, samesite="strict", secure=_https(request))
    response.delete_cookie(ACT_COOKIE, path="/", httponly=True, samesite="strict", secure=_https(request))
    return response


@router.post("/console/signout")
async def signout(request: Request, backend: BackendDep, csrf: Annotated[str, Form()] = "") -> Response:
    session_id = request.cookies.get(SESSION_COOKIE)
    if session_id:
        try:
            await session_principal(request, csrf_token=csrf)
        except Problem as exc:
            if exc.status == 403:  # a forged sign-out from elsewhere does nothing
                raise
        await backend.access.delete_session(session_id)
        backend.auth.forget_session(session_id)
    response = _to_signin()
    for cookie in (SESSION_COOKIE, ACT_COOKIE):
        response.delete_cookie(cookie, path="/", httponly=True, samesite="strict", secure=_https(request))
    return response


@router.post("/console/act")
async def act_for_tenant(request: Request, backend: BackendDep, csrf: Annotated[str, Form()] = "",
                         tenant: Annotated[str, Form()] = "", next: Annotated[str, Form()] = "/console/tasks"
                         ) -> Response:
    """Admins: act for another tenant (every page and API call of this session), or with an
    empty tenant for their own again. The header says which tenant a page acts for."""
    who = await _form_sender(request, csrf)
    if isinstance(who, Response):
        return who
    if not who.can(Role.admin):
        return _page(request, "not_found.html", 403, who=who, what="Only an admin key can act for another tenant.")
    tenant = tenant.strip()
    if tenant and not re.fullmatch(TENANT_PATTERN, tenant):
        return _page(request, "not_found.html", 422, who=who,
                     what=f"“{tenant[:130]}” is not a tenant name: letters, digits, '.', '_' and '-', up to 128.")
    # Only this console's own pages: never a redirect to another site.
    target = next if next.startswith("/console/") and "//" not in next and "\\" not in next else "/console/tasks"
    response = RedirectResponse(target, status_code=303)
    if tenant and tenant != who.home_tenant:
        response.set_cookie(ACT_COOKIE, tenant, max_age=int(SESSION_TTL.total_seconds()), path="/", httponly=True,
                            samesite="strict", secure=_https(request))
    else:
        response.delete_cookie(ACT_COOKIE, path="/", httponly=True, samesite="strict", secure=_https(request))
    return response


# -- tasks ---------------------------------------------------------------------------------

def _status(value: str | None) -> TaskStatus | None:
    return TaskStatus(value) if value in TaskStatus.__members__ else None


def _listing(who: Principal, status: str | None, cursor: str | None, q: str, tenant: str) -> Listing | str:
    """The list's filters from the query; an admin's `tenant` picks one tenant (empty: all of
    them). A message instead where the tenant is no tenant's name."""
    tenant = tenant.strip()
    if not who.can(Role.admin):
        tenant = who.tenant  # everyone else sees their own tenant's tasks, whatever the link says
    elif not tenant:
        tenant = EVERY_TENANT
    elif not re.fullmatch(TENANT_PATTERN, tenant):
        return f"“{tenant[:130]}” is not a tenant name: letters, digits, '.', '_' and '-', up to 128."
    return Listing(tenant, _status(status), q.strip()[:200], cursor)


async def _tasks(request: Request, backend: Backend, template: str, status: str | None, cursor: str | None,
                 q: str, tenant: str) -> Response:
    who = await _who(request)
    if who is None:
        return _to_signin() if template == "tasks.html" else Response(status_code=401, headers=_HEADERS)
    admin = who.can(Role.admin)
    listing = _listing(who, status, cursor, q, tenant)
    if isinstance(listing, str):
        return _page(request, template, 422, who=who, items=[], next_cursor=None, cursor=None, status=None,
                     statuses=[s.value for s in TaskStatus], admin=admin, q=q, tenant=tenant, error=listing,
                     tenants=[])
    items, next_cursor = await task_rows(backend.store, listing)
    return _page(request, template, who=who, items=items, next_cursor=next_cursor, cursor=listing.cursor,
                 status=listing.status, statuses=[s.value for s in TaskStatus], admin=admin, q=listing.q,
                 tenant="" if listing.tenant == EVERY_TENANT or not admin else listing.tenant,
                 tenants=await tenants(backend.store) if admin and template == "tasks.html" else [])


@router.get("/console/tasks")
async def tasks_page(request: Request, backend: BackendDep, status: str | None = None,
                     cursor: str | None = None, q: str = "", tenant: str = "") -> Response:
    return await _tasks(request, backend, "tasks.html", status, cursor, q, tenant)


@router.get("/console/tasks/rows")
async def task_rows_fragment(request: Request, backend: BackendDep, status: str | None = None,
                             cursor: str | None = None, q: str = "", tenant: str = "") -> Response:
    """The list's rows alone: the page's script swaps them in every few seconds."""
    return await _tasks(request, backend, "_task_rows.html", status, cursor, q, tenant)


@router.get("/console/new")
async def new_task_form(request: Request) -> Response:
    who = await _who(request)
    if who is None:
        return _to_signin()
    return _page(request, "new_task.html", who=who, form={"priority": "normal"}, errors=[],
                 member=who.can(Role.member))


@router.post("/console/new")
async def new_task(request: Request, backend: BackendDep, csrf: Annotated[str, Form()] = "",
                   goal: Annotated[str, Form()] = "", plan: Annotated[str, Form()] = "",
                   priority: Annotated[str, Form()] = "normal", max_cost_usd: Annotated[str, Form()] = "",
                   max_llm_calls: Annotated[str, Form()] = "",
                   acceptance_tests: Annotated[str, Form()] = "") -> Response:
    who = await _form_sender(request, csrf)
    if isinstance(who, Response):
        return who
    form = {"goal": goal, "plan": plan, "priority": priority, "max_cost_usd": max_cost_usd,
            "max_llm_calls": max_llm_calls, "acceptance_tests": acceptance_tests}
    # Read from the parsed form rather than declared as File(): a browser posts an empty file
    # part when nothing was picked, which some clients send as a plain string field.
    uploads = [f for f in (await request.form()).getlist("files") if isinstance(f, UploadFile) and f.filename]
    errors: list[dict[str, str | None]] = []
    parsed_plan = None

    def fail(status: int) -> Response:
        return _page(request, "new_task.html", status, who=who, form=form, errors=errors,
                     member=who.can(Role.member), outline=outline(plan, parsed_plan, errors))

    if not who.can(Role.member):
        errors.append({"field": None, "node": None, "message": "Your key is a viewer key: it cannot submit tasks."})
        return fail(403)
    body: dict[str, Any] = {"goal": goal.strip(), "priority": priority}
    if plan.strip():
        try:
            parsed_plan = parse_plan(plan)
            body["plan"] = parsed_plan
        except yaml.YAMLError as exc:
            errors.append({"field": "plan", "node": None, "message": f"not valid JSON or YAML: {exc}"})
    if acceptance_tests.strip():
        try:
            body["acceptance_tests"] = yaml.safe_load(acceptance_tests)
        except yaml.YAMLError as exc:
            errors.append({"field": "acceptance_tests", "node": None, "message": f"not valid JSON or YAML: {exc}"})
    budget = {k: v.strip() for k, v in (("max_cost_usd", max_cost_usd), ("max_llm_calls", max_llm_calls))
              if v.strip()}
    if budget:
        body["budget"] = {**backend.config.default_budget.model_dump(), **budget}
    if errors:
        return fail(422)
    try:
        task = TaskCreate.model_validate(body)
    except ValidationError as exc:
        for e in exc.errors():
            loc = tuple(e["loc"])
            errors.append({"field": ".".join(str(p) for p in loc) or "(form)", "node": node_of(parsed_plan, loc),
                           "message": e["msg"]})
        return fail(422)
    try:
        created = await submit_task(backend, task, who, uploads)
    except Problem as exc:
        for e in exc.errors or [{"field": None, "message": exc.detail}]:
            errors.append({"field": e.get("field"), "node": node_of(parsed_plan, message=e.get("message") or ""),
                           "message": e.get("message")})
        return fail(exc.status)
    return RedirectResponse(f"/console/tasks/{json.loads(created.body)['task_id']}", status_code=303)


@router.get("/console/tasks/{task_id}")
async def task_page(request: Request, backend: BackendDep, task_id: str) -> Response:
    who = await _who(request)
    if who is None:
        return _to_signin()
    row = await backend.store.get(task_id, tenant=None if who.can(Role.admin) else who.tenant)
    if row is None:
        return _page(request, "not_found.html", 404, who=who, what=f"No task {task_id} in tenant {who.tenant}.")
    if row.tenant != who.tenant:  # an admin, from the list of every tenant's tasks
        return _page(request, "other_tenant.html", who=who, task_id=task_id, goal=row.goal, owner=row.tenant)
    return _page(request, "task.html", who=who, task_id=task_id, goal=row.goal, member=who.can(Role.member))


@router.get("/console/tasks/{task_id}/preview/{name:path}")
async def artifact_preview(request: Request, backend: BackendDep, task_id: str, name: str) -> Response:
    who = await _who(request)
    if who is None:
        return Response(status_code=401, headers=_HEADERS)
    task = reduce(await backend.store.read(task_id)) if await backend.store.get(task_id, tenant=who.tenant) else None
    match = next((a for a in task.artifacts if a.name == name), None) if task else None
    workspace = backend.settings.workspace(who.tenant, task_id).resolve()
    path = (workspace / name).resolve()
    if match is None or not path.is_relative_to(workspace) or not path.is_file():
        return _page(request, "_preview.html", 404, view={"kind": "none", "why": "no such artifact"}, artifact=None,
                     task_id=task_id)
    view = await asyncio.to_thread(preview, path, match.media_type)
    return _page(request, "_preview.html", view=view, artifact=match, task_id=task_id)


@router.get("/console/tasks/{task_id}/replay/{seq}")
async def replay_state(request: Request, backend: BackendDep, task_id: str, seq: int) -> Response:
    """The task's state as the reducer derives it from its first `seq` events: the replay
    slider's view of any moment of the log."""
    who = await _who(request)
    if who is None:
        return Response(status_code=401, headers=_HEADERS)
    if seq < 1 or await backend.store.get(task_id, tenant=who.tenant) is None:
        return Response(status_code=404, headers=_HEADERS)
    task = reduce(await backend.store.read(task_id, limit=seq))
    if task is None:
        return Response(status_code=404, headers=_HEADERS)
    return JSONResponse(task.model_dump(mode="json"), headers=_HEADERS)


def _logged_screenshots(events: list[Any]) -> set[str]:
    """Workspace names the log records as a browser step's screenshot (evidence.screenshot, or
    the screenshot tool's PNG): the only unpublished files the console serves."""
    found: set[str] = set()

    def walk(value: Any, key: str | None = None) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, k)
        elif isinstance(value, list):
            for v in value:
                walk(v)
        elif isinstance(value, str) and key in ("screenshot", "name") and value.startswith("web/") \
                and value.endswith(".png"):
            found.add(value)

    for e in events:
        if e.type.value == "tool.result":
            walk(e.payload.get("output"))
    return found


@router.get("/console/tasks/{task_id}/shots/{name:path}")
async def browser_screenshot(request: Request, backend: BackendDep, task_id: str, name: str) -> Response:
    """A browser step's screenshot while the task still runs (published artifacts come at the end)."""
    who = await _who(request)
    if who is None:
        return Response(status_code=401, headers=_HEADERS)
    row = await backend.store.get(task_id, tenant=who.tenant)
    workspace = backend.settings.workspace(who.tenant, task_id).resolve()
    path = (workspace / name).resolve()
    if row is None or name not in _logged_screenshots(await backend.store.read(task_id)) \
            or not path.is_relative_to(workspace) or not path.is_file():
        return Response(status_code=404, headers=_HEADERS)
    return FileResponse(path, media_type="image/png", headers={**_HEADERS, "Cache-Control": "private, max-age=3600"})


@router.get("/console/collections")
async def collections_page(request: Request) -> Response:
    who = await _who(request)
    if who is None:
        return _to_signin()
    return _page(request, "collections.html", who=who, member=who.can(Role.member))


@router.get("/console/system")
async def system_page(request: Request, backend: BackendDep) -> Response:
    """Admins: every component's health, as `GET /healthz` reports it to an admin, and the
    queue by tenant and priority."""
    who = await _who(request)
    if who is None:
        return _to_signin()
    if not who.can(Role.admin):
        return _page(request, "not_found.html", 403, who=who, what="The System page is for admin keys.")
    report = await backend.health()
    parts = [health_entry(k, v) for k, v in report.items() if k != "ok"]
    return _page(request, "system.html", who=who, ok=report.get("ok"), parts=parts,
                 at=utcnow().strftime("%H:%M:%S"), queue=await queue_by_tenant(backend.store), links=links(),
                 models=await models(getattr(backend, "llm", None)), errors=await recent_errors(backend.store))


@router.get("/console/static/{name}")
async def static(name: str) -> Response:
    path = (_STATIC / name).resolve()
    if path.parent != _STATIC.resolve() or not path.is_file():
        return Response(status_code=404)
    return FileResponse(path, headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})
