"""``eventfold init NAME``: write a small working project to start from.

The files are templates in ``framework/scaffold/project`` (``*-tpl``): ``__package__`` in a path and
``{{package}}`` / ``{{name}}`` in a text are replaced; nothing else is interpreted.
"""

from __future__ import annotations

import argparse
import keyword
import re
import sys
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from framework.errors import ConfigurationError
from framework.settings import Settings

__all__ = ["package_name", "register", "write_project"]

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,49}$")
# Names a user's package must not take: they would shadow what the project imports.
_TAKEN = {"framework", "strawberry", "graphql", "pydantic", "tests", "test", "app", "eventsourcing", "starlette",
          *sys.stdlib_module_names}


def register(commands: Any) -> None:
    init = commands.add_parser("init", help="write a small working application to start from")
    init.add_argument("name", metavar="NAME", help="the project's name; its package is NAME with _ for -")
    init.add_argument("--directory", type=Path, help="where to write it (default ./NAME); must be empty or new")
    init.set_defaults(run=run_init)


def run_init(_: Settings, args: argparse.Namespace) -> int:
    target: Path = args.directory or Path(args.name)
    written = write_project(args.name, target)
    print(f"eventfold: wrote {len(written)} files to {target}/. Next:\n"
          f"  cd {target}\n"
          "  python -m pytest            # its tests\n"
          "  eventfold dev --seed        # serve it on http://127.0.0.1:8000")
    return 0


def package_name(name: str) -> str:
    """The Python package of a project called ``name``; one clear line when it cannot be one."""
    if not _NAME.match(name):
        raise ConfigurationError(f"{name!r} cannot name a project: letters, digits, - and _, a letter first")
    package = name.replace("-", "_").lower()
    if keyword.iskeyword(package) or package in _TAKEN:
        raise ConfigurationError(f"{name!r} would shadow the module {package!r}: choose another name")
    return package


def write_project(name: str, target: Path) -> list[Path]:
    """Write the project to ``target`` (new or empty) and return the files written."""
    package = package_name(name)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ConfigurationError(f"{target} already exists and is not empty: nothing written")
    files = list(_templates(resources.files("framework") / "scaffold" / "project", Path()))
    written = []
    for source, relative in files:
        text = source.read_text(encoding="utf-8").replace("{{package}}", package).replace("{{name}}", name)
        path = target / _destination(relative, package)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def _templates(folder: Traversable, relative: Path) -> list[tuple[Traversable, Path]]:
    found: list[tuple[Traversable, Path]] = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.is_dir():
            found += _templates(entry, relative / entry.name)
        elif entry.name.endswith("-tpl"):
            found.append((entry, relative / entry.name.removesuffix("-tpl")))
    return found


def _destination(relative: Path, package: str) -> Path:
    parts = [package if part == "__package__" else part for part in relative.parts]
    if parts[-1] == "gitignore":
        parts[-1] = ".gitignore"
    return Path(*parts)
