"""Architecture guards: imports point inward, and the public API is pinned."""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

import framework

FRAMEWORK = Path(framework.__file__).parent
ADAPTER_DRIVERS = ("psycopg", "psycopg_pool", "nats", "strawberry", "starlette", "uvicorn", "prometheus_client",
                   "opentelemetry")
EDGE_PACKAGES = ("framework.adapters", "framework.http", "framework.graphql")
# Top-level modules that are edges themselves, not core.
EDGE_MODULES = {"cli", "metrics"}

EXPECTED_PUBLIC_API = [
    "Aggregate",
    "AggregateNotFound",
    "AlreadyExists",
    "App",
    "Command",
    "CommandBus",
    "CommandContext",
    "CommandRejected",
    "CommandResult",
    "CommandRouter",
    "ConcurrencyConflict",
    "ConfigurationError",
    "Event",
    "EventEnvelope",
    "EventMetadata",
    "EventSchemaError",
    "EventStore",
    "EventfoldError",
    "Executed",
    "IdempotencyKeyInFlight",
    "IdempotencyKeyReused",
    "InvalidCommand",
    "InvalidTransition",
    "Lax",
    "RuleViolation",
    "Seeding",
    "Settings",
    "StoreUnavailable",
    "UnitOfWork",
    "UnknownCommand",
    "Upcaster",
    "event",
]


def _modules_loaded_by(statement: str) -> list[str]:
    probe = f"import sys; {statement}; import json; print(json.dumps(sorted(sys.modules)))"
    completed = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    loaded: list[str] = json.loads(completed.stdout)
    return loaded


def _top(name: str) -> str:
    return name.split(".")[0]


def test_importing_framework_pulls_in_no_adapter_driver() -> None:
    loaded = _modules_loaded_by("import framework")
    assert "framework" in loaded  # the probe did import it
    assert [m for m in loaded if _top(m) in ADAPTER_DRIVERS] == []
    assert [m for m in loaded if m.startswith(EDGE_PACKAGES)] == []


def test_the_example_domain_pulls_in_no_adapter_driver_either() -> None:
    loaded = _modules_loaded_by("import example_app.handlers, example_app.app")
    assert [m for m in loaded if _top(m) in ADAPTER_DRIVERS] == []


def test_the_embedded_stores_do_not_pull_in_postgres_or_nats() -> None:
    loaded = _modules_loaded_by("import framework.adapters.memory, framework.adapters.sqlite")
    assert [m for m in loaded if _top(m) in ("psycopg", "psycopg_pool", "nats", "strawberry")] == []


def test_the_guard_would_notice_a_driver() -> None:
    """The probe really reports what an import pulls in."""
    assert "starlette" in {_top(m) for m in _modules_loaded_by("import framework.http.write_api")}


EXPECTED_READ_API = ["Condition", "Deadline", "HandlerContext", "InvalidQuery", "IssuedCommand", "Page", "PageRequest",
                     "ProcessManager", "Projector", "ReadModel", "Refusal", "Sort", "on", "paginate"]


def test_the_public_api_is_pinned() -> None:
    assert framework.__all__ == EXPECTED_PUBLIC_API


def test_the_read_side_is_one_module_and_pulls_in_no_adapter() -> None:
    import framework.read

    assert framework.read.__all__ == EXPECTED_READ_API
    assert all(getattr(framework.read, name) is not None for name in EXPECTED_READ_API)
    loaded = _modules_loaded_by("import framework.read")
    assert [m for m in loaded if _top(m) in ADAPTER_DRIVERS or m.startswith(EDGE_PACKAGES)] == []


@pytest.mark.parametrize("name", EXPECTED_PUBLIC_API)
def test_every_public_name_is_importable(name: str) -> None:
    exec(f"from framework import {name}", {})
    assert getattr(framework, name) is not None


def test_star_import_gives_exactly_the_public_api() -> None:
    namespace: dict[str, object] = {}
    exec("from framework import *", namespace)
    assert sorted(k for k in namespace if k != "__builtins__") == sorted(EXPECTED_PUBLIC_API)


def _core_modules() -> list[Path]:
    return sorted(p for p in FRAMEWORK.glob("*.py") if p.stem not in EDGE_MODULES)


def _imported_names(path: Path) -> set[str]:
    """Every module a file imports, anywhere in it (functions included), absolute names."""
    package = "framework"
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package if node.level == 1 else ""
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module":
            names.update(str(a.value) for a in node.args if isinstance(a, ast.Constant))
    return names


def test_there_are_core_modules_to_check() -> None:
    stems = {p.stem for p in _core_modules()}
    assert {"aggregate", "bus", "commands", "events", "mapper", "store", "unit_of_work"} <= stems


@pytest.mark.parametrize("path", _core_modules(), ids=lambda p: p.name)
def test_core_modules_import_no_adapter(path: Path) -> None:
    imported = _imported_names(path)
    assert sorted(n for n in imported if n.startswith(EDGE_PACKAGES)) == []
    assert sorted(n for n in imported if _top(n) in ADAPTER_DRIVERS) == []


def test_the_import_parser_sees_nested_and_relative_imports(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "def f():\n    from framework.adapters import memory\n"
        "from .http import write_api\nimport psycopg\n"
    )
    imported = _imported_names(sample)
    assert {"framework.adapters", "framework.http", "psycopg"} <= imported


def test_every_framework_module_declares_all() -> None:
    missing = []
    for path in sorted(FRAMEWORK.rglob("*.py")):
        if path.name == "__main__.py" or (path.name == "__init__.py" and path.parent != FRAMEWORK):
            continue  # running __main__ would start the CLI; sub-package inits only re-export
        relative = path.relative_to(FRAMEWORK.parent).with_suffix("")
        module = importlib.import_module(".".join(relative.parts).removesuffix(".__init__"))
        if not hasattr(module, "__all__"):
            missing.append(module.__name__)
    assert missing == []
