"""Finding the application: one reference, resolved the way uvicorn resolves an ASGI app.

The reference is ``package.module:attribute`` (``:app`` when left out), naming an ``App`` or a function
that returns one. It comes from ``--app``, else ``EVENTFOLD_APP``, else ``[tool.eventfold] app`` in the
``pyproject.toml`` of the current directory. The current directory is importable, so a project's own
packages load without ``PYTHONPATH`` or an install.
"""

from __future__ import annotations

import importlib
import sys
import tomllib
import traceback
from pathlib import Path

from framework.app import App
from framework.errors import ConfigurationError

__all__ = ["find_app_reference", "load_app"]

_HOW = ("name one with --app package.module:app, EVENTFOLD_APP, or `app = \"package.module:app\"` under "
        "[tool.eventfold] in pyproject.toml")


def find_app_reference(flag: str | None, variable: str | None, directory: Path) -> tuple[str, str]:
    """The reference (from ``--app``, ``EVENTFOLD_APP`` or pyproject.toml) and where it came from."""
    if flag:
        return flag, "--app"
    if variable:
        return variable, "EVENTFOLD_APP"
    configured = _pyproject_app(directory / "pyproject.toml")
    if configured:
        return configured, "[tool.eventfold] app"
    raise ConfigurationError(f"no application given: {_HOW}")


def load_app(reference: str, *, source: str = "EVENTFOLD_APP", directory: Path | None = None) -> App:
    """Import the module the reference names and return its ``App``; one clear line for any mistake."""
    module_name, _, attribute = reference.partition(":")
    attribute = attribute or "app"
    if not module_name or not all(part.isidentifier() for part in [*module_name.split("."), *attribute.split(".")]):
        raise ConfigurationError(f"{source}={reference!r} must look like 'package.module:app'")
    _make_importable(directory or Path.cwd())
    module = _import(module_name, reference, source)
    found: object = module
    for part in attribute.split("."):
        if not hasattr(found, part):
            raise ConfigurationError(f"{source}={reference!r}: module {module_name!r} has no {attribute!r}")
        found = getattr(found, part)
    return _as_app(found, reference, source)


def _pyproject_app(path: Path) -> str | None:
    if not path.is_file():
        return None
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8")).get("tool", {}).get("eventfold", {})
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigurationError(f"{path} cannot be read: {e}") from None
    app = table.get("app") if isinstance(table, dict) else None
    if app is not None and not isinstance(app, str):
        raise ConfigurationError(f"{path}: [tool.eventfold] app must be a string like 'package.module:app'")
    return app


def _make_importable(directory: Path) -> None:
    entry = str(directory.resolve())
    if entry not in sys.path:
        sys.path.insert(0, entry)


def _import(module_name: str, reference: str, source: str) -> object:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and (module_name == e.name or module_name.startswith(f"{e.name}.")):
            raise ConfigurationError(
                f"{source}={reference!r}: no module named {e.name!r} in {Path.cwd()} or the installed packages"
            ) from None
        raise ConfigurationError(f"{source}={reference!r} failed to import: {_where(e)}") from None
    except Exception as e:  # the application's own module failed: say where, in one line
        raise ConfigurationError(f"{source}={reference!r} failed to import: {_where(e)}") from None


def _where(error: BaseException) -> str:
    frames = traceback.extract_tb(error.__traceback__)
    location = f" ({frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"{type(error).__name__}: {error}{location}"


def _as_app(found: object, reference: str, source: str) -> App:
    if isinstance(found, App):
        return found
    if callable(found) and not isinstance(found, type):
        try:
            built = found()
        except ConfigurationError:
            raise
        except Exception as e:
            raise ConfigurationError(f"{source}={reference!r} failed: {_where(e)}") from None
        if isinstance(built, App):
            return built
        found = built
    raise ConfigurationError(
        f"{source}={reference!r} is a {type(found).__name__}, not an App; declare "
        "`app = App(commands=router, projections=[...], graphql=build_graphql)` and name it"
    )
