"""The user's build file, imported and called: SPEC parsed, its folder on ``sys.path`` meanwhile, and
whatever it raises said as the user's, at the user's line (a usage error, never ours)."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import sys
import traceback
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from nandoctor.errors import UsageError, UserExit, describe


def split_spec(spec: str) -> tuple[str, str]:
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise UsageError(f"bad SPEC {spec!r}: expected path/to/file.py:function or package.module:function")
    if not all(part.isidentifier() for part in attr.split(".")):
        raise UsageError(f"bad SPEC {spec!r}: {attr!r} is not a function name")
    return target, attr


def _is_file_target(target: str) -> bool:
    return target.endswith(".py") or os.sep in target or "/" in target or Path(target).is_file()


@contextmanager
def _on_sys_path(folder: str):
    sys.path.insert(0, folder)
    try:
        yield
    finally:
        try:
            sys.path.remove(folder)
        except ValueError:
            pass


def _user_frame(exc: BaseException, user_file: str | None) -> str:
    """``file.py:12`` for the deepest frame in the user's code (or the deepest frame at all)."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "?"
    chosen = frames[-1]
    if user_file:
        mine = [f for f in frames if os.path.abspath(f.filename) == os.path.abspath(user_file)]
        if mine:
            chosen = mine[-1]
    else:
        outside = [f for f in frames if "nandoctor" not in Path(f.filename).parts]
        if outside:
            chosen = outside[-1]
    return f"{chosen.filename}:{chosen.lineno}"


def import_target(target: str) -> tuple[Any, str | None]:
    """Import a file path or a dotted module; returns (module, file path or None)."""
    if _is_file_target(target):
        path = Path(target)
        if not path.is_file():
            raise UsageError(f"no such file: {target}")
        path = path.resolve()
        module_name = f"nandoctor_user_{abs(hash(str(path)))}"
        module_spec = importlib.util.spec_from_file_location(module_name, path)
        if module_spec is None or module_spec.loader is None:
            raise UsageError(f"cannot import {target}: not a Python file")
        module = importlib.util.module_from_spec(module_spec)
        with _on_sys_path(str(path.parent)):
            try:
                sys.modules[module_name] = module
                module_spec.loader.exec_module(module)
            except Exception as exc:  # the user's file raised while importing
                sys.modules.pop(module_name, None)
                raise UsageError(
                    f"importing {target} raised {describe(exc)} (at {_user_frame(exc, str(path))})"
                ) from exc
        return module, str(path)
    with _on_sys_path(os.getcwd()):
        try:
            return importlib.import_module(target), None
        except ModuleNotFoundError as exc:
            if exc.name and target.startswith(exc.name):
                raise UsageError(f"no module named {target!r} (and no file of that name)") from exc
            raise UsageError(f"importing {target} raised {describe(exc)} (at {_user_frame(exc, None)})") from exc
        except Exception as exc:
            raise UsageError(f"importing {target} raised {describe(exc)} (at {_user_frame(exc, None)})") from exc


def resolve_function(spec: str) -> tuple[Callable, str | None]:
    target, attr = split_spec(spec)
    module, user_file = import_target(target)
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            public = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
            hint = f" (callables there: {', '.join(public[:8])})" if public else ""
            raise UsageError(f"{target} has no function {attr!r}{hint}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UsageError(f"{spec}: {attr!r} is not callable")
    return obj, user_file


def call_build(function: Callable, kwargs: dict[str, Any], spec: str, user_file: str | None) -> Any:
    try:
        inspect.signature(function).bind(**kwargs)
    except TypeError as exc:
        raise UsageError(f"{spec} does not accept {sorted(kwargs)}: {exc}") from exc
    except ValueError:
        pass  # builtins without a signature: let the call decide
    target = user_file or os.getcwd()
    with _on_sys_path(str(Path(target).parent if user_file else target)):
        try:
            try:
                return function(**kwargs)
            except SystemExit as exc:
                raise UserExit.of(exc, "the build function") from None
        except Exception as exc:
            raise UsageError(f"{spec} raised {describe(exc)} (at {_user_frame(exc, user_file)})") from exc
