"""The soak test: mixed load over real HTTP while the streaming roles are killed at random and NATS goes away.

For ``EVENTFOLD_SOAK_SECONDS`` (45 by default; CI runs this bounded version, under two minutes in all),
writer threads send a mix of valid commands to a real ``eventfold write-api`` subprocess (accounts
opened, credits, debits, transfers, corporate actions announced, validated, rejected and cancelled),
each with an ``Idempotency-Key`` and retried with the same key while the answer says "not now".
Meanwhile the relay and two ``eventfold project`` workers (each running every projection: one holds
each projection's lease, the other stands by) are killed with SIGKILL at random, 10+ times in all,
and restarted; the test's own nats-server is stopped once and started again. Then, once everything
settled:

* every read model equals a fresh replay of the store, at the head (``assert_matches_replay``);
* each validated action's entitlements were recorded once, from the holdings at validation, and
  every entitled depositor was notified exactly once (and once more on cancellation), counted from
  the store (``assert_process_outcomes``);
* the stream holds each stored event exactly once, every command sent was accepted, nothing was
  parked (the entitlements of actions cancelled before they could be recorded go to the process's
  ``on_refused``), and no role logged a traceback.

``EVENTFOLD_SOAK_SEED`` replays one run's schedule of kills (the seed is printed).
"""

from __future__ import annotations

import os
import random
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from streaming_helpers import (
    Role,
    active_positions,
    assert_matches_replay,
    assert_process_outcomes,
    assert_stream_matches_store,
    deployment_for,
    new_isin,
    record_date,
    short_token,
    wait_until,
)
from support.http import wait_until_healthy
from support.nats import ThrowawayNats, free_port, private_nats, settings_for  # noqa: F401
from support.postgres import PgDatabase

from projections import build_projectors

pytestmark = [pytest.mark.postgres, pytest.mark.nats]

NAMES = [p.name for p in build_projectors()]
PROCESS = "corporate_action_process"
SOAK_SECONDS = float(os.environ.get("EVENTFOLD_SOAK_SECONDS", "45"))
MIN_KILLS = 10
NATS_DOWN_SECONDS = 3.0
WRITERS = 4
RETRIED = {"idempotency_key_in_flight", "concurrency_conflict"}  # 409s that mean "not now"


# --- the load ---------------------------------------------------------------------------------


@dataclass
class Sent:
    accepted: int = 0
    retries: int = 0
    by_command: dict[str, int] = field(default_factory=dict)


class HttpWriter(threading.Thread):
    """Valid commands over HTTP until stopped; it tracks its own accounts' balances and its actions'
    states, so the write API has no reason to refuse any of them. Every command carries an
    Idempotency-Key and is sent again with the same key after a transport error, a 503 or a
    "not now" 409, until it is answered for good."""

    def __init__(self, base_url: str, isins: list[str], seed: int, *, pause: float = 0.02) -> None:
        super().__init__(name=f"http-writer-{seed}", daemon=True)
        self.base_url, self.isins, self.pause = base_url, isins, pause
        self.rng = random.Random(seed)
        self.prefix = f"S{short_token()}"
        self.accounts: list[str] = []
        self.balances: dict[tuple[str, str], int] = {}
        self.validated: list[str] = []  # actions that may still be cancelled
        self.sent = Sent()
        self.errors: list[str] = []
        self.stopping = threading.Event()
        self._keys = 0

    def run(self) -> None:
        try:
            with httpx.Client(base_url=self.base_url, timeout=30) as client:
                self.client = client
                for _ in range(8):
                    self.open_account()
                while not self.stopping.is_set():
                    self.step()
                    self.stopping.wait(self.pause)
        except BaseException as error:
            self.errors.append(f"{type(error).__name__}: {error}")

    def send(self, command: str, body: dict[str, Any]) -> None:
        self._keys += 1
        key = f"{self.prefix}-{self._keys}"
        deadline = time.monotonic() + 60
        while True:
            try:
                response = self.client.post(f"/commands/{command}", json=body, headers={"Idempotency-Key": key})
            except httpx.TransportError as error:
                outcome = f"transport error {error!r}"
            else:
                if response.status_code == 200:
                    self.sent.accepted += 1
                    self.sent.by_command[command] = self.sent.by_command.get(command, 0) + 1
                    return
                code = response.json().get("code") if response.headers.get("content-type", "").startswith(
                    "application/problem+json") else None
                outcome = f"HTTP {response.status_code} {code}: {response.text[:300]}"
                if not (response.status_code == 503 or (response.status_code == 409 and code in RETRIED)):
                    raise AssertionError(f"{command} {body} refused: {outcome}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{command} {body} not accepted within 60 s: {outcome}")
            self.sent.retries += 1
            time.sleep(0.1)

    def open_account(self) -> None:
        number = f"{self.prefix}-{len(self.accounts):03d}"
        self.send("OpenAccount", {"account_number": number, "holder_name": f"Holder {number}"})
        self.accounts.append(number)

    def step(self) -> None:
        roll = self.rng.random()
        if roll < 0.015:
            self.corporate_action()
        elif roll < 0.025 and self.validated:
            action = self.validated.pop(self.rng.randrange(len(self.validated)))
            self.send("CancelCorporateAction", {"action_id": action, "reason": "withdrawn by the issuer"})
        elif roll < 0.04:
            self.open_account()
        elif roll < 0.25:
            self.move()
        else:
            self.credit()

    def credit(self) -> None:
        account, isin = self.rng.choice(self.accounts), self.rng.choice(self.isins)
        quantity = self.rng.randint(1, 40)
        self.send("CreditHoldings", {"account_number": account, "isin": isin, "quantity": quantity})
        self.balances[(account, isin)] = self.balances.get((account, isin), 0) + quantity

    def move(self) -> None:
        """A debit or a transfer of part of a holding (never more than held)."""
        held = [(a, i) for (a, i), n in self.balances.items() if n > 0]
        if not held:
            self.credit()
            return
        account, isin = self.rng.choice(held)
        quantity = self.rng.randint(1, self.balances[(account, isin)])
        if self.rng.random() < 0.4:
            self.send("DebitHoldings", {"account_number": account, "isin": isin, "quantity": quantity})
        else:
            target = self.rng.choice([a for a in self.accounts if a != account] or [account])
            self.send("TransferHoldings", {"from_account": account, "to_account": target, "isin": isin,
                                           "quantity": quantity})
            self.balances[(target, isin)] = self.balances.get((target, isin), 0) + quantity
        self.balances[(account, isin)] -= quantity

    def corporate_action(self) -> None:
        action = f"{self.prefix}-CA{self._keys}"
        terms: dict[str, Any] = {"kind": "cash_dividend", "amount_per_unit": "0.25", "currency": "USD"}
        self.send("AnnounceCorporateAction", {"action_id": action, "isin": self.rng.choice(self.isins),
                                              "record_date": record_date().isoformat(), "terms": terms})
        if self.rng.random() < 0.15:
            self.send("RejectCorporateAction", {"action_id": action, "reasons": ["terms do not match the prospectus"]})
            return
        self.send("ValidateCorporateAction", {"action_id": action})
        if self.rng.random() < 0.4:
            self.validated.append(action)  # cancelled later, perhaps before the process recorded its entitlements

    def stop(self) -> None:
        self.stopping.set()
        self.join(90)
        assert not self.is_alive(), "a writer did not stop"


# --- the chaos --------------------------------------------------------------------------------


@dataclass
class Chaos:
    """SIGKILLs of random roles at jittered times over the soak, and NATS stopped once on the way."""

    roles: list[Role]
    nats: ThrowawayNats
    rng: random.Random
    log: list[str] = field(default_factory=list)
    nats_stopped: bool = False

    def run(self, seconds: float, keep_going: Callable[[], bool]) -> None:
        started = time.monotonic()
        kills = max(MIN_KILLS + 2, round(seconds / 5))
        interval = seconds / (kills + 1)
        nats_at = started + seconds * 0.45
        victims = self.roles * (kills // len(self.roles) + 1)  # each role killed about as often, in random order
        self.rng.shuffle(victims)
        for number in range(1, kills + 1):
            self._until(started + interval * number + self.rng.uniform(-interval / 3, interval / 3), keep_going)
            if not self.nats_stopped and time.monotonic() >= nats_at:
                self.nats_outage(started)
            role = victims[number - 1]
            role.kill()
            self.log.append(f"{time.monotonic() - started:5.1f}s kill {role.name}")
            self._until(time.monotonic() + self.rng.uniform(0.0, 1.5), keep_going)
            role.start()
        if not self.nats_stopped:
            self.nats_outage(started)
        self._until(started + seconds, keep_going)

    def nats_outage(self, started: float) -> None:
        self.nats.stop()
        self.nats_stopped = True
        self.log.append(f"{time.monotonic() - started:5.1f}s nats stopped")
        time.sleep(NATS_DOWN_SECONDS)  # commands keep coming meanwhile: the store does not need the bus
        self.nats.start()
        self.log.append(f"{time.monotonic() - started:5.1f}s nats started")

    @staticmethod
    def _until(when: float, keep_going: Callable[[], bool]) -> None:
        while time.monotonic() < when:
            assert keep_going(), "a writer failed during the soak"
            time.sleep(min(0.1, max(0.0, when - time.monotonic())))


# --- the checks -------------------------------------------------------------------------------


class Settled:
    """Every projection at the head, nothing left in an outbox, and the head not moving meanwhile."""

    def __init__(self, store: Any, views: Any) -> None:
        self.store, self.views = store, views
        self.seen: dict[str, Any] = {}

    def __call__(self) -> bool:
        head = self.store.head()
        positions = active_positions(self.views, NAMES)
        pending = {name: s.pending for name, s in self.views.outbox_stats().items() if s.pending}
        self.seen.update(head=head, positions=positions, pending=pending)
        return all(p == head for p in positions.values()) and not pending and self.store.head() == head


def assert_nothing_parked(views: Any, store: Any) -> None:
    """No event was parked and no command refused but the entitlements of actions cancelled before the
    process could record them, which its ``on_refused`` takes as business as usual."""
    from framework.mapper import from_stored

    assert views.dead_letters() == [], views.dead_letters()
    events = [from_stored(n).event for n in store.read_all(0, 1_000_000_000)]
    validated = {e.action_id for e in events if type(e).__name__ == "CorporateActionValidated"}
    cancelled = {e.action_id for e in events if type(e).__name__ == "CorporateActionCancelled"}
    recorded = {e.action_id for e in events if type(e).__name__ == "EntitlementsCalculated"}
    raced = validated & cancelled - recorded
    print(f"{len(raced)} validated actions cancelled before their entitlements were recorded (on_refused)")


# --- the test ---------------------------------------------------------------------------------


def test_soak_mixed_http_load_with_random_kills_and_a_nats_outage(
    pg_database: PgDatabase, pg_schema: str, private_nats: ThrowawayNats, tmp_path: Path,  # noqa: F811
) -> None:
    seed = int(os.environ.get("EVENTFOLD_SOAK_SEED") or secrets.randbelow(10**9))
    print(f"soak: {SOAK_SECONDS:g} s, seed {seed} (EVENTFOLD_SOAK_SEED={seed} replays the schedule)")
    rng = random.Random(seed)
    jetstream = settings_for(private_nats.url, storage="file")
    extra = {"EVENTFOLD_IDEMPOTENCY_LEASE_SECONDS": "3", "EVENTFOLD_LEASE_SECONDS": "3"}
    with deployment_for(pg_database, pg_schema, jetstream, tmp_path, extra_env=extra) as deployment:
        deployment.init_db()
        store, views = deployment.store(), deployment.views()
        port = free_port()
        api = deployment.start("write-api", "--host", "127.0.0.1", "--port", str(port), name="write-api")
        base_url = f"http://127.0.0.1:{port}"
        wait_until_healthy(base_url, process=api.process)
        roles = [deployment.start("relay"), deployment.start("project", name="project-a"),
                 deployment.start("project", name="project-b")]
        isins = [new_isin(), new_isin()]
        for isin in isins:
            response = httpx.post(f"{base_url}/commands/RegisterSecurity", timeout=30,
                                  json={"isin": isin, "name": f"Soak {isin}", "currency": "USD"})
            assert response.status_code == 200, response.text

        writers = [HttpWriter(base_url, isins, rng.randrange(10**9)) for _ in range(WRITERS)]
        for writer in writers:
            writer.start()
        chaos = Chaos(roles, private_nats, rng)
        started = time.monotonic()
        try:
            chaos.run(SOAK_SECONDS, lambda: all(w.is_alive() or not w.errors for w in writers))
        finally:
            for writer in writers:
                writer.stop()
        print(f"load and chaos for {time.monotonic() - started:.1f}s:", "; ".join(chaos.log))
        assert not [e for w in writers for e in w.errors], [e for w in writers for e in w.errors]
        sent = Sent()
        for writer in writers:
            sent.accepted += writer.sent.accepted
            sent.retries += writer.sent.retries
            for command, count in writer.sent.by_command.items():
                sent.by_command[command] = sent.by_command.get(command, 0) + count
        print(f"commands accepted: {sent.accepted} ({sent.retries} retried sends): {sent.by_command}")

        for role in roles:
            if not role.alive:
                role.start()
        settled = Settled(store, views)
        wait_until(settled, timeout=90, interval=0.25, message=lambda: f"settled: {settled.seen}")
        print(f"settled {time.monotonic() - started:.1f}s after the start, head {store.head()}")

        kills = {role.name: role.kills for role in roles}
        assert sum(kills.values()) >= MIN_KILLS and all(n >= 2 for n in kills.values()), kills
        assert chaos.nats_stopped
        assert all(role.alive for role in [api, *roles]), [r.name for r in [api, *roles] if not r.alive]
        assert_matches_replay(views, store)
        outcome = assert_process_outcomes(store)
        notified = sum(outcome.notified.values())
        print(f"kills {kills}; {len(outcome.entitled)} actions entitled, {notified} notifications")
        assert outcome.entitled and notified, "the load made the process notify nobody: the test proves nothing"
        assert sent.by_command.get("CancelCorporateAction"), "no cancellation was sent"
        assert_nothing_parked(views, store)
        assert_stream_matches_store(jetstream, store)
        deployment.assert_no_tracebacks()
