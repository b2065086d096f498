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
    "BusUnavailable",
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
    "FieldError",
    "Forbidden",
    "History",
    "IdempotencyKeyInFlight",
    "IdempotencyKeyReused",
    "InvalidCommand",
    "InvalidTransition",
    "KeysUnavailable",
    "Lax",
    "MalformedJson",
    "RateLimited",
    "RowRejected",
    "RuleViolation",
    "Seeding",
    "Settings",
    "StoreUnavailable",
    "Unauthenticated",
    "Unavailable",
    "UnitOfWork",
    "UnknownCommand",
    "Upcaster",
    "VersionMismatch",
    "VersionSwitched",
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


EXPECTED_READ_API = ["Condition", "Deadline", "Dispatcher", "HandlerContext", "InvalidQuery", "IssuedCommand", "Page",
                     "PageRequest", "ProcessManager", "ProjectionWorker", "Projector", "ReadModel", "Refusal", "Sort",
                     "on", "paginate", "rebuild", "rebuild_aggregate"]


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


# --- the house in order: no library internals, no run-time patching, one reader of each thing -------------

def _framework_sources() -> list[Path]:
    return sorted(FRAMEWORK.rglob("*.py"))


def _relative(path: Path) -> str:
    return path.relative_to(FRAMEWORK).as_posix()


def _trees() -> list[tuple[str, ast.Module]]:
    return [(_relative(p), ast.parse(p.read_text(), str(p))) for p in _framework_sources()]


def _attribute_chain(node: ast.AST) -> str:
    """``a.b.c`` for an attribute access (``?`` for anything that is not a plain name)."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    parts.append(node.id if isinstance(node, ast.Name) else "?")
    return ".".join(reversed(parts))


def _environment_reads(tree: ast.Module) -> list[str]:
    found = [_attribute_chain(n) for n in ast.walk(tree)
             if isinstance(n, ast.Attribute) and n.attr in ("environ", "environb", "getenv", "putenv", "unsetenv")]
    found += [f"from os import {a.name}" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
              and n.module == "os" for a in n.names if a.name in ("environ", "environb", "getenv")]
    return found


# The process start hands the environment to Settings.from_env; nothing else touches it.
ENVIRONMENT_READERS = {"cli/__init__.py"}


def test_only_the_cli_start_up_hands_the_environment_to_settings() -> None:
    readers = {name: found for name, tree in _trees() if (found := _environment_reads(tree))}
    assert set(readers) == ENVIRONMENT_READERS, readers


def test_the_environment_guard_would_notice_a_reader() -> None:
    tree = ast.parse("import os\nfrom os import getenv\nurl = os.environ.get('X')\n")
    assert _environment_reads(tree) == ["os.environ", "from os import getenv"]


# Attributes of libraries' objects that are theirs to use, not ours (pydantic's model internals,
# eventsourcing's private insert and its type registration, psycopg_pool's connection arguments).
LIBRARY_INTERNALS = {
    "__pydantic_private__", "__pydantic_extra__", "__pydantic_fields_set__", "__pydantic_validator__",
    "_insert_events", "_insert_stored_events", "register_type_adapters", "psycopg_python_types",
}


def _internals_used(tree: ast.Module) -> list[str]:
    used = [n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr in LIBRARY_INTERNALS]
    used += [_attribute_chain(n) for n in ast.walk(tree)
             if isinstance(n, ast.Attribute) and n.attr in ("kwargs", "conninfo") and "pool" in _attribute_chain(n)]
    used += [str(n.value) for n in ast.walk(tree) if isinstance(n, ast.Constant) and n.value in LIBRARY_INTERNALS]
    return used


def test_no_library_internals_are_used() -> None:
    assert {name: used for name, tree in _trees() if (used := _internals_used(tree))} == {}


def test_the_internals_guard_would_notice_one() -> None:
    tree = ast.parse("row.__pydantic_private__\nstore.datastore.pool.kwargs['x'] = 1\nr._insert_events(c, e)\n")
    assert sorted(_internals_used(tree)) == ["__pydantic_private__", "_insert_events", "store.datastore.pool.kwargs"]


def _patching(source: str, tree: ast.Module) -> list[str]:
    """Methods replaced on objects (what mypy's ``method-assign`` code is for), ``object.__setattr__``
    (writing past a model's own checks), and getattr/hasattr probes for a port's declared members."""
    found = [line.strip() for line in source.splitlines() if "method-assign" in line]
    found += [chain for n in ast.walk(tree)
              if isinstance(n, ast.Attribute) and (chain := _attribute_chain(n)) == "object.__setattr__"]
    found += [f"{n.func.id}(..., {n.args[1].value!r})" for n in ast.walk(tree)
              if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in ("getattr", "hasattr")
              and len(n.args) >= 2 and isinstance(n.args[1], ast.Constant) and n.args[1].value in PORT_MEMBERS]
    return found


# Members a port declares: code holding the port calls them, it does not probe for them.
PORT_MEMBERS = {"blocking", "authenticate", "wait_for", "read", "principal"}


def test_nothing_is_patched_at_run_time() -> None:
    found = {}
    for path in _framework_sources():
        source = path.read_text()
        if patched := _patching(source, ast.parse(source, str(path))):
            found[_relative(path)] = patched
    assert found == {}


def test_the_patching_guard_would_notice_it() -> None:
    source = ("context.read = traced  # type: ignore[method-assign]\n_set = object.__setattr__\n"
              "if getattr(auth, 'blocking', False): pass\n")
    assert _patching(source, ast.parse(source)) == [
        "context.read = traced  # type: ignore[method-assign]", "object.__setattr__", "getattr(..., 'blocking')"]


PROCESS_WIDE = {"gc", "signal.signal", "sys.setrecursionlimit", "sys.setswitchinterval", "sys.setprofile",
                "sys.settrace", "asyncio.set_event_loop_policy"}


def _process_wide_settings(tree: ast.Module) -> list[str]:
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names if a.name == "gc"]
    names += [chain for n in ast.walk(tree) if isinstance(n, ast.Attribute)
              if (chain := _attribute_chain(n)) in PROCESS_WIDE]
    return names


def test_process_wide_settings_are_made_by_the_cli_only() -> None:
    changed = {name: found for name, tree in _trees() if (found := _process_wide_settings(tree))}
    assert [name for name in changed if not name.startswith("cli/")] == [], changed
    assert "cli/startup.py" in changed  # the guard sees the collector tuning where it is


def _header_reads(tree: ast.Module) -> list[str]:
    """``json.loads`` of a stored event's ``state``, and the document's header keys looked up."""
    found = [ast.unparse(n) for n in ast.walk(tree) if isinstance(n, ast.Call)
             and _attribute_chain(n.func) == "json.loads"
             and any(isinstance(a, ast.Attribute) and a.attr == "state" for arg in n.args for a in ast.walk(arg))]
    found += [ast.unparse(n) for n in ast.walk(tree) if isinstance(n, ast.Subscript)
              and isinstance(n.slice, ast.Constant) and n.slice.value in ("agg", "meta")]
    found += [ast.unparse(n) for n in ast.walk(tree) if isinstance(n, ast.Call)
              and isinstance(n.func, ast.Attribute) and n.func.attr == "get"
              and n.args and isinstance(n.args[0], ast.Constant) and n.args[0].value in ("agg", "meta")]
    return found


def test_the_stored_document_is_read_by_the_mapper_only() -> None:
    readers = {name: found for name, tree in _trees() if (found := _header_reads(tree))}
    assert set(readers) == {"mapper.py"}, readers


def test_the_header_guard_would_notice_a_reader() -> None:
    tree = ast.parse("meta = json.loads(pending[0].state)['meta']\nagg = document.get('agg')\n")
    assert _header_reads(tree) == ["json.loads(pending[0].state)", "json.loads(pending[0].state)['meta']",
                                   "document.get('agg')"]


# --- role-sized ports ------------------------------------------------------------------------------------

def _own_methods(port: type) -> set[str]:
    return {name for name, value in vars(port).items() if callable(value) and not name.startswith("_")}


def _roles() -> list[type]:
    from framework import store, views

    return [store.EventStreams, store.EventLog, store.IdempotencyKeys, store.SnapshotStore, store.RelayTracking,
            views.ProjectionVersions, views.ProjectionBatches, views.ProjectionLifecycle, views.DeadLetters,
            views.ReadModels, views.ProjectionLeases, views.ProcessStore, views.RowCaching]


@pytest.mark.parametrize("role", _roles(), ids=lambda r: r.__name__)
def test_each_role_of_a_port_is_small(role: type) -> None:
    assert 1 <= len(_own_methods(role)) <= 8


def test_the_whole_ports_add_only_their_life_cycle_to_the_roles() -> None:
    from framework.store import EventStore
    from framework.views import RowCaching, ViewStore

    assert _own_methods(EventStore) == _own_methods(ViewStore) == {"create_schema", "close"}
    assert not issubclass(ViewStore, RowCaching)  # speed only: an adapter may have it, none must


def test_the_memory_adapters_leave_no_method_empty_but_their_life_cycle() -> None:
    empty = []
    for name in ("memory.py", "memory_views.py", "memory_bus.py"):
        tree = ast.parse((FRAMEWORK / "adapters" / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                body = [b for b in node.body if not (isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant))]
                if all(isinstance(b, ast.Pass) for b in body):
                    empty.append(node.name)
    assert set(empty) <= {"create_schema", "close"}, empty
