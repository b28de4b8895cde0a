"""Functions named by import path, "package.module:function": how a configuration names user code."""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

_IMPORT_PATH = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


def is_import_path(text: str) -> bool:
    return bool(_IMPORT_PATH.fullmatch(text))


def one_line(err: BaseException) -> str:
    """An exception as "Type: message" on one line."""
    return f"{type(err).__name__}: {' '.join(str(err).split())}".rstrip(": ")


def resolve(path: str) -> Callable[..., Any]:
    """The callable `path` names; ValueError saying what was found instead."""
    if not is_import_path(path):
        raise ValueError(f"{path!r} is not an import path (package.module:function)")
    module_name, attribute = path.split(":")
    try:
        target = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        raise ValueError(
            f"cannot import {module_name} ({one_line(err)}); put its folder on PYTHONPATH "
            "(on a cluster: runtime_env)"
        ) from None
    except Exception as err:
        raise ValueError(f"importing {module_name} raised {one_line(err)}") from None
    for name in attribute.split("."):
        if not hasattr(target, name):
            raise ValueError(f"{module_name} has no {attribute}")
        target = getattr(target, name)
    if not callable(target):
        raise ValueError(f"{path} is a {type(target).__name__}, not a function")
    return target


def source_folder(path: str) -> str | None:
    """The folder on `sys.path` that the code `path` names is imported from, unless it is
    installed (site-packages): what another process needs on its path to import it."""
    spec = importlib.util.find_spec(path.split(":")[0].split(".")[0])
    if spec is None or spec.origin is None:
        return None
    origin = Path(spec.origin).resolve()
    for entry in sys.path:
        folder = Path(entry or ".").resolve()
        if folder in origin.parents and "site-packages" not in folder.parts:
            return str(folder)
    return None
