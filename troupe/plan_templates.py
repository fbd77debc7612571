"""Plan templates shipped in troupe/templates/: a plan whose strings hold `{{slots.name}}`.

A string that is exactly one slot takes the slot's value as it is (a list stays a list);
a slot inside longer text is rendered as text. Slots not given take their `default`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from troupe.models import Plan

__all__ = ["TEMPLATES", "fill_slots", "load_template"]

TEMPLATES = Path(__file__).parent / "templates"
SLOT = re.compile(r"\{\{\s*slots\.([A-Za-z_]\w*)\s*\}\}")


def fill_slots(value: Any, slots: dict[str, Any]) -> Any:
    if isinstance(value, dict):
        return {k: fill_slots(v, slots) for k, v in value.items()}
    if isinstance(value, list):
        return [fill_slots(v, slots) for v in value]
    if isinstance(value, str):
        whole = SLOT.fullmatch(value.strip())
        return slots[whole.group(1)] if whole else SLOT.sub(lambda m: str(slots[m.group(1)]), value)
    return value


def load_template(name: str, slots: dict[str, Any]) -> tuple[dict[str, Any], Plan]:
    """The template's YAML document and its plan with `slots` (and defaults) filled in."""
    doc = yaml.safe_load((TEMPLATES / f"{name}.yaml").read_text())
    defaults = {k: v["default"] for k, v in doc.get("slots", {}).items() if "default" in v}
    return doc, Plan.model_validate({"nodes": fill_slots(doc["nodes"], {**defaults, **slots})})
