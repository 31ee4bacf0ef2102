"""User input as pydantic models, and pydantic's errors as :class:`ConfigError` naming the field.

Every spec model derives from :class:`SpecModel` (unknown keys refused, frozen, no type
coercion, finite floats). Checks a field constraint cannot express raise :func:`spec_error`, and
:func:`config_error` turns the first error of a validation into ``field``/``problem``/``fix``,
the same for the CLI (a YAML file) and the HTTP API (a JSON body).
"""

from __future__ import annotations

import difflib
import reprlib
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    ValidationError,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import PydanticCustomError, core_schema

from longrope_search.errors import ConfigError

SPEC_ERROR = "spec"  # the error type of spec_error
MAX_KEYS = 64  # keys in one section of a spec, known or not
Loc = tuple[int | str, ...]

_EXPECTED = {  # pydantic type errors -> what the field wants
    "int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
    "float_type": "a number", "float_parsing": "a number", "string_type": "a string",
    "bool_type": "true or false", "bool_parsing": "true or false", "tuple_type": "a list",
    "list_type": "a list", "model_type": "a mapping", "model_attributes_type": "a mapping",
    "dict_type": "a mapping",
}
_BOUNDS = {"greater_than": ("gt", ">"), "greater_than_equal": ("ge", "≥"),
           "less_than": ("lt", "<"), "less_than_equal": ("le", "≤")}


def _show(value: Any) -> str:
    """A short repr: a long string or list in an error message stays one line."""
    short = reprlib.Repr()
    short.maxstring = short.maxother = 60
    short.maxlist = short.maxtuple = 4
    return short.repr(value)


def spec_error(problem: str, fix: str, field: str = "") -> PydanticCustomError:
    """A failed check inside a validator; ``field`` names a field below the error's location
    (a model validator's, for a check across fields), empty for a field validator's own."""
    return PydanticCustomError(SPEC_ERROR, "{problem}",
                               {"problem": problem, "fix": fix, "field": field})


class SpecModel(BaseModel):
    """A section of a spec: unknown keys refused, immutable, no coercion, no inf or nan.

    Lists are tuples annotated with :class:`AtMost`, which also takes YAML/JSON lists.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _few_keys(cls, data: Any) -> Any:
        """Refuse a huge mapping at once: pydantic would report each unknown key in turn."""
        if isinstance(data, Mapping) and len(data) > MAX_KEYS:
            raise spec_error(f"has {len(data)} keys, more than {MAX_KEYS}",
                             "remove the unknown keys (configs/README.md lists the known ones)")
        return data


@dataclass(frozen=True)
class AtMost:
    """Metadata for a ``tuple[X, ...]`` field: a list or tuple of at most ``n`` items.

    The length is checked before the items (pydantic checks it after, so a list of millions of
    bad items would take seconds); a list is taken as a tuple in strict mode too.
    """

    n: int

    def __get_pydantic_core_schema__(self, source: Any,
                                     handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_before_validator_function(self._check, handler(source))

    def __get_pydantic_json_schema__(self, schema: core_schema.CoreSchema,
                                     handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return {**handler(schema), "maxItems": self.n}

    def _check(self, value: Any) -> Any:
        if not isinstance(value, (list, tuple)):
            return value  # the tuple schema reports it
        if len(value) > self.n:
            raise spec_error(f"has {len(value)} items, more than {self.n}",
                             f"give at most {self.n} items")
        return tuple(value)


def dotted(loc: Loc) -> str:
    """``("seeds", 3)`` → ``seeds[3]``, ``("search", "top_k")`` → ``search.top_k``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def config_error(errors: ValidationError | Sequence[Mapping[str, Any]],
                 model: type[BaseModel], root: str = "spec") -> ConfigError:
    """The first error of a validation of ``model`` as a :class:`ConfigError`.

    ``errors`` is the :class:`ValidationError` or its ``.errors()``, with locations relative to
    ``model`` (strip FastAPI's ``body`` first); the model's field descriptions complete the fixes.
    ``root`` names the input as a whole (when it is not a mapping, say).
    """
    every = errors.errors() if isinstance(errors, ValidationError) else errors
    error = _union(every) or every[0]
    loc: Loc = () if error["type"] == "json_invalid" else tuple(error["loc"])  # not a field
    ctx = error.get("ctx") or {}
    if error["type"] == SPEC_ERROR:
        where = (*loc, ctx["field"]) if ctx.get("field") else loc
        return ConfigError(dotted(where) or root, ctx["problem"], ctx["fix"])
    if error["type"] == "extra_forbidden":
        return _unknown_key(loc, model)
    problem, fix = _describe(error, loc)
    info = _field_at(model, loc)
    if info is not None and info.description:  # a pattern is best explained in words
        fix = (info.description if error["type"] == "string_pattern_mismatch"
               else f"{fix}; {_key(loc)}: {info.description}")
    return ConfigError(dotted(loc) or root, problem, fix)


def _union(errors: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The errors of every branch of a union (pydantic locates each under its branch's tag, as
    ``lr.bool``, ``lr.int``) as one error at the field, expecting any of the branches."""
    first = tuple(errors[0]["loc"])
    branch = [e for e in errors if tuple(e["loc"])[:-1] == first[:-1] and e["type"] in _EXPECTED]
    if len(first) < 2 or len(branch) < 2 or len(branch) != len(errors):
        return None
    wants = " or ".join(dict.fromkeys(_EXPECTED[e["type"]] for e in branch))
    return {"type": SPEC_ERROR, "loc": first[:-1], "ctx": {
        "problem": f"expected {wants}, got {_show(errors[0].get('input'))}",
        "fix": f"give {wants}", "field": ""}}


def _describe(error: Mapping[str, Any], loc: Loc) -> tuple[str, str]:
    """(problem, fix) for one of pydantic's own errors."""
    kind, ctx, value = error["type"], error.get("ctx") or {}, error.get("input")
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, got {_show(value)}", f"give {_EXPECTED[kind]}"
    if kind in _BOUNDS:
        key, op = _BOUNDS[kind]
        limit = _number(ctx[key])
        return f"must be {op} {limit}, got {_show(value)}", f"use a value {op} {limit}"
    if kind == "finite_number":
        return f"must be a finite number, got {_show(value)}", "use a finite number"
    if kind == "string_too_long":
        return (f"has {len(value)} characters, more than {ctx['max_length']}",
                f"shorten it to {ctx['max_length']} characters at most")
    if kind == "literal_error":
        what = _key(loc) if loc and isinstance(loc[-1], str) else "value"
        return f"unknown {what} {_show(value)}", f"use {ctx['expected']}"
    if kind == "string_pattern_mismatch":
        return f"{_show(value)} is not a valid {_key(loc)}", f"match {ctx['pattern']}"
    if kind == "missing":
        return "required key missing", "add it"
    if kind == "json_invalid":
        return f"is not valid JSON ({ctx.get('error', '')})", "send a JSON object"
    return error["msg"], "see the spec's schema in /openapi.json"


def _number(x: Any) -> Any:
    """1.0 → 1, for messages."""
    return int(x) if isinstance(x, float) and x.is_integer() else x


def _unknown_key(loc: Loc, model: type[BaseModel]) -> ConfigError:
    """An unknown key, with the closest known key (a typo, most likely) as the fix."""
    parent = _model_at(model, loc[:-1])
    known = sorted(parent.model_fields) if parent else []
    close = difflib.get_close_matches(str(loc[-1]), known, n=1)
    fix = (f"did you mean '{dotted((*loc[:-1], close[0]))}'?" if close
           else f"known keys: {known}")
    return ConfigError(dotted(loc), "unknown key", fix)


def _key(loc: Loc) -> str:
    """The last key in a location (``seeds`` for ``("seeds", 3)``)."""
    return next((p for p in reversed(loc) if isinstance(p, str)), "value")


def _model_at(model: type[BaseModel] | None, loc: Loc) -> type[BaseModel] | None:
    """The model class of the section at ``loc`` (None if it is not a section)."""
    for part in loc:
        if isinstance(part, int):
            continue
        info = model.model_fields.get(part) if model else None
        model = _section(info.annotation) if info else None
    return model


def _section(kind: Any) -> type[BaseModel] | None:
    """The model inside a field's type: ``X``, ``X | None``, ``tuple[X, ...]``, annotated."""
    if isinstance(kind, type) and issubclass(kind, BaseModel):
        return kind
    if typing.get_origin(kind) is typing.Annotated:
        return _section(typing.get_args(kind)[0])
    inner = [_section(a) for a in typing.get_args(kind) if a not in (type(None), Ellipsis)]
    return inner[0] if len(inner) == 1 else None


def _field_at(model: type[BaseModel], loc: Loc) -> FieldInfo | None:
    """The field at ``loc`` (that of the list for a list item), if there is one."""
    keys = tuple(p for p in loc if isinstance(p, str))
    parent = _model_at(model, keys[:-1]) if keys else None
    return parent.model_fields.get(keys[-1]) if parent else None
