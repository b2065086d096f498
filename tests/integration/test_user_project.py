"""A user's application outside this repository: `eventfold init`, its tests, `dev`, the distributed roles,
a replay. No PYTHONPATH, no install of the project, and none of the repository's example code reachable.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.http import eventfold_executable, wait_until_healthy
from support.nats import JetStreamSettings, free_port
from support.postgres import PgDatabase

pytestmark = [pytest.mark.postgres, pytest.mark.nats]

REPOSITORY = Path(__file__).resolve().parents[2]
TRACEBACK = "Traceback (most recent call last)"
# The user's own `projections` package: the name the example's read side has in this repository.
USER_PROJECTIONS = 'WHOSE = "the user\'s"\n'


def user_env(**variables: str) -> dict[str, str]:
    """The environment of a user's shell: no EVENTFOLD_* but those given, no PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTFOLD_") and k != "PYTHONPATH"}
    return {**env, "PYTHONUNBUFFERED": "1", **variables}


def eventfold(project: Path, *args: str, env: dict[str, str] | None = None,
              timeout: float = 120) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([eventfold_executable(), *args], cwd=project, env=env or user_env(), capture_output=True,
                          text=True, timeout=timeout, check=False)
    assert TRACEBACK not in done.stdout + done.stderr, done.stderr
    return done


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("user-home")
    done = eventfold(home, "init", "lending-library")
    assert done.returncode == 0, done.stderr
    root = home / "lending-library"
    (root / "projections").mkdir()
    (root / "projections" / "__init__.py").write_text(USER_PROJECTIONS)
    return root


class Role:
    """One `eventfold` role of the user's project, run from its directory, output kept in a file."""

    def __init__(self, project: Path, env: dict[str, str], *args: str) -> None:
        self.log = project / f".role-{args[0]}-{time.monotonic_ns()}.log"
        with self.log.open("w") as out:
            self.process = subprocess.Popen([eventfold_executable(), *args], cwd=project, env=env, stdout=out,
                                            stderr=subprocess.STDOUT, text=True)

    def output(self) -> str:
        return self.log.read_text()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)
        assert TRACEBACK not in self.output(), self.output()


@pytest.fixture
def roles() -> Iterator[list[Role]]:
    started: list[Role] = []
    yield started
    for role in reversed(started):
        role.stop()


def serve(roles: list[Role], project: Path, env: dict[str, str], *args: str) -> str:
    port = free_port()
    role = Role(project, env, *args, "--port", str(port))
    roles.append(role)
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(base_url, timeout=60, process=role.process)  # type: ignore[arg-type]
    except RuntimeError:
        raise AssertionError(role.output()) from None
    return base_url


def graphql(base_url: str, query: str, position: int | None = None) -> dict[str, Any]:
    headers = {"Eventfold-Position": str(position)} if position is not None else {}
    answer = httpx.post(f"{base_url}/graphql", json={"query": query}, headers=headers, timeout=30).json()
    assert "errors" not in answer, answer
    data: dict[str, Any] = answer["data"]
    return data


def test_the_generated_project_passes_its_own_tests(project: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=project,
                          env=user_env(), capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert " passed" in done.stdout and "failed" not in done.stdout


def test_no_example_code_is_reachable_or_loaded(project: Path) -> None:
    probe = (
        "import json, sys\n"
        "from framework.loading import find_app_reference, load_app\n"
        "from pathlib import Path\n"
        "app = load_app(*find_app_reference(None, None, Path.cwd())[:1])\n"
        "import projections\n"
        "ours = [n for n, m in sys.modules.items() if str(getattr(m, '__file__', '') or '').startswith(sys.argv[1])]\n"
        "print(json.dumps({'app': app.name, 'projections': projections.WHOSE, 'repository_modules': ours}))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe, str(REPOSITORY / "example_app"), ], cwd=project,
                          env=user_env(), capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen == {"app": "lending-library", "projections": "the user's", "repository_modules": []}
    example = subprocess.run([sys.executable, "-c", "import example_app"], cwd=project, env=user_env(),
                             capture_output=True, text=True, timeout=60, check=False)
    assert "No module named 'example_app'" in example.stderr  # not installed with the framework


def test_dev_serves_it_at_once(project: Path, roles: list[Role], tmp_path: Path) -> None:
    base_url = serve(roles, project, user_env(EVENTFOLD_SQLITE_PATH=str(tmp_path / "events.sqlite3")), "dev")
    written = httpx.post(f"{base_url}/commands/AddBook", json={"isbn": "978-0765326355", "title": "Kings"},
                         timeout=30)
    assert written.status_code == 200, written.text
    data = graphql(base_url, '{ book(isbn: "978-0765326355") { title borrower } }', written.json()["position"])
    assert data == {"book": {"title": "Kings", "borrower": None}}
    refused = httpx.post(f"{base_url}/commands/LendBook", json={"isbn": "0000", "member": "ann"}, timeout=30)
    assert refused.status_code == 404 and refused.json()["code"] == "aggregate_not_found", refused.text


def test_seed_runs_the_applications_own_seed(project: Path, roles: list[Role], tmp_path: Path) -> None:
    base_url = serve(roles, project, user_env(EVENTFOLD_SQLITE_PATH=str(tmp_path / "events.sqlite3")),
                     "dev", "--seed")
    deadline = time.monotonic() + 30
    while "Seeded." not in roles[-1].output() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "Seeded." in roles[-1].output() and "Demo data loaded" not in roles[-1].output()
    books = graphql(base_url, "{ books(first: 5) { nodes { isbn borrower } } }")["books"]["nodes"]
    assert {b["isbn"]: b["borrower"] for b in books} == {"978-0441013593": "ann", "978-0553293357": None}


def test_the_distributed_roles_run_it_and_a_replay_rebuilds_it(
    project: Path, pg_database: PgDatabase, pg_schema: str, jetstream_settings: JetStreamSettings,
    roles: list[Role],  # last: the roles stop before the schema and the stream are dropped
) -> None:
    js = jetstream_settings
    env = user_env(EVENTFOLD_DATABASE_URL=pg_database.url(), EVENTFOLD_DB_SCHEMA=pg_schema,
                   EVENTFOLD_DB_POOL_SIZE="3", EVENTFOLD_NATS_URL=",".join(js.servers), EVENTFOLD_STREAM=js.stream,
                   EVENTFOLD_SUBJECT_PREFIX=js.subject_prefix, EVENTFOLD_CONSUMER_PREFIX=js.consumer_prefix,
                   EVENTFOLD_STREAM_STORAGE=js.storage, EVENTFOLD_ANONYMOUS_ROLES="*")
    assert eventfold(project, "init-db", env=env).returncode == 0
    write = serve(roles, project, env, "write-api")
    roles.append(Role(project, env, "relay"))
    roles.append(Role(project, env, "project"))
    query = serve(roles, project, env, "query-api")
    position = 0
    for isbn, title in [("978-0441013593", "Dune"), ("978-0553293357", "Foundation")]:
        position = httpx.post(f"{write}/commands/AddBook", json={"isbn": isbn, "title": title},
                              timeout=30).json()["position"]
    position = httpx.post(f"{write}/commands/LendBook", json={"isbn": "978-0441013593", "member": "ann"},
                          timeout=30).json()["position"]
    shelf = "{ books(first: 10) { nodes { isbn title borrower reminders } } }"
    before = graphql(query, shelf, position)
    assert [b["borrower"] for b in before["books"]["nodes"]] == ["ann", None]
    replayed = eventfold(project, "replay", "catalogue", env=env)
    assert replayed.returncode == 0, replayed.stderr
    assert "catalogue version 2 is now active" in replayed.stderr
    assert graphql(query, shelf) == before  # the rebuilt read model equals the one built live

    # Its past, its one book rebuilt, and its process's command out of the clients' reach.
    history = eventfold(project, "events", "Book:978-0441013593", env=env)
    assert history.returncode == 0, history.stderr
    assert [line.split()[4] for line in history.stdout.splitlines()[1:]] == ["BookAdded", "BookLent"]
    one = eventfold(project, "replay", "catalogue", "--aggregate", "Book:978-0441013593", env=env)
    assert one.returncode == 0, one.stderr
    assert "catalogue version 3 is now active, with the rows of book '978-0441013593'" in one.stderr
    assert graphql(query, shelf) == before
    internal = httpx.post(f"{write}/commands/RemindBorrower", json={"isbn": "978-0441013593"}, timeout=30)
    assert (internal.status_code, internal.json()["code"]) == (404, "unknown_command")
