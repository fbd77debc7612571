"""The `extract` field map: selectors (CSS or XPath) to JSON, with types and nesting."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tools.web.errors import PageError

__all__ = ["FieldSpec", "compile_fields", "shape"]

_ATTR_SUFFIX = re.compile(r"\s+@([A-Za-z_][\w:-]*)$")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


class FieldSpec(BaseModel):
    """One field to extract. A plain string is shorthand for `{"selector": ...}`; a trailing
    ` @attr` reads an attribute, e.g. `"a.next @href"`."""

    model_config = ConfigDict(extra="forbid")

    selector: str = Field(description="CSS, or XPath when it starts with / ( ./ or xpath=")
    attr: str | None = Field(None, description="Attribute to read instead of the text; 'html' for inner HTML.")
    type: Literal["string", "number", "integer", "boolean", "object"] = "string"
    many: bool = Field(False, description="All matches as a list, instead of the first.")
    fields: dict[str, FieldSpec | str] | None = Field(
        None, description="Sub-fields read inside each match (type object).")
    required: bool = Field(False, description="Fail when nothing matches, instead of returning null.")

    def js(self) -> dict[str, Any]:
        sel = self.selector
        xpath = sel.startswith(("xpath=", "/", "(", "./"))
        sel = sel.removeprefix("xpath=").removeprefix("css=")
        out: dict[str, Any] = {"sel": sel, "xpath": xpath, "attr": self.attr, "many": self.many}
        if self.fields:
            out["fields"] = {k: _spec(v).js() for k, v in self.fields.items()}
        return out


def _spec(value: FieldSpec | str | dict[str, Any]) -> FieldSpec:
    if isinstance(value, FieldSpec):
        return value
    if isinstance(value, str):
        m = _ATTR_SUFFIX.search(value)
        return FieldSpec(selector=value[: m.start()] if m else value, attr=m.group(1) if m else None)
    return FieldSpec.model_validate(value)


def compile_fields(fields: dict[str, Any]) -> dict[str, FieldSpec]:
    if not fields:
        raise PageError("extract needs at least one field, e.g. {\"title\": \"h1\", \"links\": "
                        "{\"selector\": \"a\", \"attr\": \"href\", \"many\": true}}")
    try:
        return {name: _spec(v) for name, v in fields.items()}
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise PageError(f"bad extract field spec: {problems}") from None


def shape(specs: dict[str, FieldSpec], raw: dict[str, Any], url: str) -> dict[str, Any]:
    """Coerce raw strings to the declared types; a required field with no match is an error."""
    out: dict[str, Any] = {}
    for name, spec in specs.items():
        value = raw.get(name)
        if spec.required and (value is None or value == []):
            raise PageError(f"required field {name!r} (selector {spec.selector!r}) matched nothing on {url}; "
                            "check the selector against the page text that browse returns", retryable=False)
        if spec.many:
            out[name] = [_one(spec, v, url) for v in value or []]
        else:
            out[name] = None if value is None else _one(spec, value, url)
    return out


def _one(spec: FieldSpec, value: Any, url: str) -> Any:
    if spec.fields:
        return shape({k: _spec(v) for k, v in spec.fields.items()}, value or {}, url)
    if spec.type in ("number", "integer"):
        m = _NUMBER.search(str(value))
        if not m:
            return None
        number = float(m.group().replace(",", ""))
        return int(number) if spec.type == "integer" else number
    if spec.type == "boolean":
        return str(value).strip().lower() in ("true", "yes", "1", "on", "checked")
    return value
