"""``eventfold dev`` (the embedded mode: SQLite events, in-process read models and position signals)
serves GraphQL subscriptions over WebSocket and answers read-your-writes queries without polling."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx
from support.http import CliServer, clean_env
from support.live import LiveClient

ISIN = "US0378331005"
CARD = "subscription($id: String!, $since: Int!) { card(actionId: $id, since: $since) { position card { status } } }"


def test_eventfold_dev_serves_subscriptions_and_waits_without_polling(tmp_path: Path) -> None:
    """The embedded mode: the in-process view store's commits feed the same watch."""
    env = clean_env(EVENTFOLD_SQLITE_PATH=str(tmp_path / "events.sqlite3"))
    with CliServer("dev", env) as server, httpx.Client(base_url=server.base_url, timeout=30) as http:

        def command(name: str, body: dict[str, Any]) -> int:
            response = http.post(f"/commands/{name}", json=body)
            assert response.status_code == 200, response.text
            return int(response.json()["position"])

        with LiveClient(server.base_url) as client:
            client.subscribe("card", CARD, {"id": "CA-DEV-1", "since": 0})
            command("RegisterSecurity", {"isin": ISIN, "name": "Apple", "currency": "USD"})
            announced = command("AnnounceCorporateAction", {
                "action_id": "CA-DEV-1", "isin": ISIN, "record_date": str(date.today() + timedelta(days=30)),
                "terms": {"kind": "cash_dividend", "amount_per_unit": "0.5", "currency": "USD"}})
            assert client.next_data("card")["card"] == {"position": announced, "card": {"status": "announced"}}
            validated = command("ValidateCorporateAction", {"action_id": "CA-DEV-1"})
            answer = http.post("/graphql", json={"query": '{ card(actionId: "CA-DEV-1") { status } }'},
                               headers={"Eventfold-Position": str(validated)}).json()
            assert answer["data"] == {"card": {"status": "validated"}}
            assert answer["extensions"]["consistency"]["reached"] is True
            update = client.next_data("card")["card"]
            assert update["card"]["status"] == "validated" and update["position"] >= validated
    assert "Traceback" not in server.stderr, server.stderr[-3000:]
