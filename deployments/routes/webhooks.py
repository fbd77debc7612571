"""Webhooks out (`/v1/webhooks`: subscriptions and their delivery log) and in (`/v1/triggers`
make a signed URL, `POST /v1/hooks/{trigger_id}`, that submits a task from a template with
the posted payload as its input). A hook is authenticated by its HMAC signature
(troupe/signing.py), not an API key: the sender is another system, not a user."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from deployments.auth import Member, Principal, Viewer
from deployments.backend import Backend, BackendDep
from deployments.problems import Problem
from deployments.routes.tasks import TaskCreate, submit_task, task_template
from memory.access import Role
from troupe.signing import HEADER, SignatureError, verify

__all__ = ["hooks", "router", "triggers"]

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])
triggers = APIRouter(prefix="/v1/triggers", tags=["webhooks"])
hooks = APIRouter(prefix="/v1/hooks", tags=["webhooks"])

Event = Literal["done", "failed", "waiting_for_input", "budget"]


class WebhookCreate(BaseModel):
    url: str = Field(min_length=8, max_length=2000, pattern=r"^https?://", description=(
        "Where the signed POSTs go (the egress policy applies when they are sent)."))
    events: list[Event] = Field(min_length=1, description="Task events to send.")


class TriggerCreate(BaseModel):
    name: str = Field(min_length=1, max_length=128)
    task: dict[str, Any] = Field(description=(
        "The task to submit (POST /v1/tasks body); `{{payload}}` in its goal becomes the posted JSON, which "
        "is also in the task's metadata as `trigger_payload`."))


def _task_body(backend: Backend, template: dict[str, Any], tenant: str, payload: Any = None) -> TaskCreate:
    text = json.dumps(payload, ensure_ascii=False) if payload is not None else ""
    task = {**template, "goal": str(template.get("goal", "")).replace("{{payload}}", text)}
    if payload is not None:
        task["metadata"] = {**template.get("metadata", {}), "trigger_payload": payload}
    return task_template(backend, task, tenant)


@router.post("", status_code=201, summary="Subscribe a URL to task events; the signing secret is shown once",
             operation_id="create_webhook")
async def create(body: WebhookCreate, caller: Member, backend: BackendDep) -> dict[str, Any]:
    row = await backend.webhooks.create(caller.tenant, body.url, list(body.events), created_by=caller.key_id)
    return {**{k: v for k, v in row.items() if k != "created_at"}, "created_at": row["created_at"].isoformat()}


@router.get("", summary="The tenant's webhooks (no secrets)", operation_id="list_webhooks")
async def list_webhooks(caller: Viewer, backend: BackendDep) -> list[dict[str, Any]]:
    return await backend.webhooks.list(caller.tenant)


@router.get("/{webhook_id}/deliveries", summary="The delivery log: attempts, answers, state",
            operation_id="webhook_deliveries")
async def deliveries(webhook_id: str, caller: Viewer, backend: BackendDep) -> list[dict[str, Any]]:
    if await backend.webhooks.get(webhook_id, caller.tenant) is None:
        raise Problem(404, "Webhook not found", f"no webhook {webhook_id!r} for tenant {caller.tenant!r}")
    return await backend.webhooks.deliveries(webhook_id)


@router.delete("/{webhook_id}", summary="Unsubscribe", operation_id="delete_webhook")
async def delete(webhook_id: str, caller: Member, backend: BackendDep) -> dict[str, Any]:
    if not await backend.webhooks.delete(webhook_id, caller.tenant):
        raise Problem(404, "Webhook not found", f"no webhook {webhook_id!r} for tenant {caller.tenant!r}")
    return {"webhook_id": webhook_id, "deleted": True}


@triggers.post("", status_code=201, summary="A signed inbound URL that submits a task from a template",
               operation_id="create_trigger")
async def create_trigger(body: TriggerCreate, caller: Member, backend: BackendDep) -> dict[str, Any]:
    _task_body(backend, body.task, caller.tenant)
    row = await backend.webhooks.create_trigger(caller.tenant, body.name, body.task, created_by=caller.key_id)
    return {"trigger_id": row["trigger_id"], "name": row["name"], "secret": row["secret"],
            "url": f"/v1/hooks/{row['trigger_id']}", "signature_header": HEADER}


@triggers.get("", summary="The tenant's triggers (no secrets)", operation_id="list_triggers")
async def list_triggers(caller: Viewer, backend: BackendDep) -> list[dict[str, Any]]:
    return await backend.webhooks.triggers(caller.tenant)


@triggers.delete("/{trigger_id}", summary="Delete a trigger; its URL stops working", operation_id="delete_trigger")
async def delete_trigger(trigger_id: str, caller: Member, backend: BackendDep) -> dict[str, Any]:
    if not await backend.webhooks.delete_trigger(trigger_id, caller.tenant):
        raise Problem(404, "Trigger not found", f"no trigger {trigger_id!r} for tenant {caller.tenant!r}")
    return {"trigger_id": trigger_id, "deleted": True}


@hooks.post("/{trigger_id}", status_code=202, summary="Fire a trigger: a JSON body signed with its secret",
            operation_id="fire_trigger")
async def fire(trigger_id: str, request: Request, backend: BackendDep) -> JSONResponse:
    raw = await request.body()
    trigger = await backend.webhooks.trigger(trigger_id)
    # An unknown trigger and a bad signature answer alike, so trigger ids cannot be probed.
    try:
        if trigger is None:
            raise SignatureError("no such trigger")
        ts = verify(trigger["secret"], raw, request.headers.get(HEADER))
    except SignatureError as exc:
        raise Problem(401, "Bad signature", f"{exc}" if trigger is not None else
                      "the signature does not match the body") from None
    try:
        payload = json.loads(raw) if raw else None
    except ValueError:
        raise Problem(400, "Bad payload", "the body must be JSON") from None
    tenant = trigger["tenant"]
    who = Principal(key_id=f"trigger:{trigger_id}", role=Role.member, home_tenant=tenant, tenant=tenant)
    # A resent hook (same timestamp and body) finds the task the first one made.
    key = "hook:" + hashlib.sha256(f"{trigger_id}.{ts}.".encode() + raw).hexdigest()
    return await submit_task(backend, _task_body(backend, trigger["task"], tenant, payload), who, [], key)
