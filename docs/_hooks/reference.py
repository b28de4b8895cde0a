"""MkDocs hook: the reference of the search file, the study file and TrainConfig, written from the
pydantic models themselves.

A page that holds `<!-- reference: search -->`, `<!-- reference: study -->` or `<!-- reference: train -->`
gets, in its place, a table of the model's keys (key, type, default, description, read from
`model_fields`), then a table per nested model its fields name. A field without a description is a
warning, so `mkdocs build --strict` fails on it.
"""

from __future__ import annotations

import inspect
import logging
import math
import re
import types
import typing
from typing import Any, Literal, get_args, get_origin, get_type_hints

import annotated_types
import yaml
from markdown.extensions.toc import slugify
from mkdocs.exceptions import PluginError
from pydantic import BaseModel
from pydantic.fields import FieldInfo

log = logging.getLogger("mkdocs.hooks.reference")

MARKER = re.compile(r"<!--\s*reference:\s*(\w+)\s*-->")
BOUNDS = (
    (annotated_types.Ge, "ge", "≥"),
    (annotated_types.Gt, "gt", ">"),
    (annotated_types.Le, "le", "≤"),
    (annotated_types.Lt, "lt", "<"),
)
SCALARS = {str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null", Any: "any"}


Extra = list[tuple[str, type[BaseModel], str]]  # a heading, a model no field names, a line on where it goes


def _models() -> dict[str, tuple[type[BaseModel], Extra]]:
    """Each reference: its model, and the models it takes that no field names."""
    from rst_tune.config import TrainConfig
    from rst_tune.search import SearchSpec
    from rst_tune.study import StudySpec

    # a searched key's dimension: the public `dimensions` property says which model it is
    dimensions = get_type_hints(SearchSpec.dimensions.fget)["return"]
    dimension = get_args(dimensions)[1]
    where = (
        "Each key under `space`, and each parameter of a family under `space.schedule` or of a method "
        "under `space.method`, is a fixed value or a dimension."
    )
    return {
        "search": (SearchSpec, [("space.KEY", dimension, where)]),
        "study": (StudySpec, []),
        "train": (TrainConfig, []),
    }


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    models = None

    def table(match: re.Match[str]) -> str:
        nonlocal models
        models = models or _models()
        if match[1] not in models:
            raise PluginError(f"{page.file.src_uri}: no reference {match[1]!r} (known: {', '.join(models)})")
        return reference(*models[match[1]])

    return MARKER.sub(table, markdown)


def reference(model: type[BaseModel], extra: Extra) -> str:
    """The tables of `model` and of every model reached from its fields, then of `extra`."""
    sections: Extra = []
    anchors: dict[type[BaseModel], str] = {}

    def visit(model: type[BaseModel], path: str) -> None:
        for name, field in model.model_fields.items():
            for nested in _nested_models(field.annotation):
                if nested not in anchors:
                    heading = f"{path}{name}"
                    anchors[nested] = slugify(heading, "-")
                    sections.append((heading, nested, ""))
                    visit(nested, f"{heading}.")

    visit(model, "")
    for heading, nested, lead in extra:
        anchors.setdefault(nested, slugify(heading, "-"))
        sections.append((heading, nested, lead))
    parts = [_table(model, anchors)]
    for heading, nested, lead in sections:
        parts += [f"## `{heading}`", lead, _doc(nested), _table(nested, anchors)]
    return "\n\n".join(part for part in parts if part) + "\n"


def _nested_models(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in get_args(annotation) for model in _nested_models(arg)]


def _doc(model: type[BaseModel]) -> str:
    """The model's own docstring (not one it inherits)."""
    doc = model.__dict__.get("__doc__")
    return " ".join(inspect.cleandoc(doc).split()) if doc else ""


def _table(model: type[BaseModel], anchors: dict[type[BaseModel], str]) -> str:
    rows = ["| key | type | default | description |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        if not field.description:
            log.warning(f"{model.__name__}.{name} has no description: give it Field(description=...)")
        cells = (f"`{name}`", _type_of(field, anchors), _default(field, anchors), field.description or "")
        rows.append("| " + " | ".join(cell.replace("|", r"\|") for cell in cells) + " |")
    return "\n".join(rows)


def _type_of(field: FieldInfo, anchors: dict[type[BaseModel], str]) -> str:
    words = [_type(field.annotation, anchors)]
    for rule in field.metadata:
        for kind, bound, sign in BOUNDS:
            if isinstance(rule, kind):
                words.append(f"{sign} {getattr(rule, bound):g}")
        if isinstance(rule, annotated_types.MinLen):
            words.append("not empty" if rule.min_length == 1 else f"at least {rule.min_length} items")
        if getattr(rule, "pattern", None):
            words.append(f"matching `{rule.pattern}`")
    return ", ".join(words)


def _type(annotation: Any, anchors: dict[type[BaseModel], str]) -> str:
    """A type in the words of a YAML file."""
    if annotation in SCALARS:
        return SCALARS[annotation]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"mapping: [`{annotation.__name__}`](#{anchors[annotation]})"
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        *others, last = [f"`{_yaml(value)}`" for value in args]
        return f"{', '.join(others)} or {last}" if others else last
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type(arg, anchors) for arg in args)
    if origin is dict:
        return (
            "mapping"
            if args[1] is Any
            else f"mapping of {_type(args[0], anchors)} to {_type(args[1], anchors)}"
        )
    if origin is list:
        item = _type(args[0], anchors) if args and args[0] is not Any else ""
        return {"": "list", "mapping": "list of mappings"}.get(item, f"list of {item}")
    if origin is tuple:
        return "[" + ", ".join(_type(arg, anchors) for arg in args) + "]"
    raise PluginError(f"no words for the type {annotation!r}: teach docs/_hooks/reference.py")


def _default(field: FieldInfo, anchors: dict[type[BaseModel], str]) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return f"[its keys' defaults](#{anchors[type(value)]})"
    return f"`{_yaml(value)}`"


def _yaml(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=math.inf, allow_unicode=True)
    return text.removesuffix("\n").removesuffix("\n...")
