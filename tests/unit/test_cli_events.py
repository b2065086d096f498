"""``eventfold events`` in process on an embedded SQLite store: what `eventfold dev` leaves, read back,
including an event the application can no longer read (shown with the reason, not a traceback)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from example_app.accounts import Account
from example_app.commands import OpenAccount
from example_app.handlers import router
from framework import CommandBus
from framework.adapters.sqlite import SQLiteEventStore
from framework.cli import main
from framework.cli.history import aggregate_reference
from framework.errors import ConfigurationError
from framework.store import StoredEvent


@pytest.fixture
def store_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in [n for n in os.environ if n.startswith("EVENTFOLD_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("EVENTFOLD_APP", "example_app.app:app")  # the example, named explicitly
    path = tmp_path / "events.sqlite3"
    store = SQLiteEventStore(str(path))
    store.create_schema()
    CommandBus(router, store).execute(OpenAccount(account_number="ACC-1", holder_name="Ada"))
    account = Account.id_for("ACC-1")
    store.append([StoredEvent(account, 2, "NoLongerKnown", b'{"v":1,"agg":"Account","meta":{},"data":{}}')])
    store.close()
    return path


def test_an_event_the_application_cannot_read_is_shown_with_the_reason(
    store_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["events", "Account:ACC-1", "--json", "--store", str(store_file)]) == 0
    opened, unknown = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert (opened["event"], opened["data"]) == ("AccountOpened", {"account_number": "ACC-1", "holder_name": "Ada"})
    assert unknown == {"position": 2, "aggregate_type": None, "aggregate_id": str(Account.id_for("ACC-1")),
                       "version": 2, "event": "NoLongerKnown",
                       "error": "no event class is registered as 'NoLongerKnown'"}
    assert main(["events", "Account:ACC-1", "--store", str(store_file)]) == 0
    assert capsys.readouterr().out.splitlines()[2].endswith(
        "NoLongerKnown  (cannot be read: no event class is registered as 'NoLongerKnown')")


def test_a_mistake_is_one_line_and_status_2(store_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["events", "Account:ACC-2", "--store", str(store_file)]) == 2
    assert capsys.readouterr().err == (
        f"eventfold: there are no events of account 'ACC-2' (id {Account.id_for('ACC-2')})\n")


@pytest.mark.parametrize("text", ["Account", ":ACC-1", "Account:", "ACC-1", "1234"])
def test_an_aggregate_is_named_by_its_id_or_type_and_key(text: str) -> None:
    with pytest.raises(ConfigurationError, match="neither an aggregate id"):
        aggregate_reference(text)
    account = Account.id_for("ACC-1")
    assert aggregate_reference(str(account)).aggregate_id == account
    assert aggregate_reference("Account:ACC-1").aggregate_id == account
    assert aggregate_reference("Account:A:B").aggregate_id == Account.id_for("A:B")  # a key may hold a colon
