"""Corporate actions: announcement rules, terms, and the status state machine."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from example_app.commands import (
    AnnounceCorporateAction,
    CancelCorporateAction,
    RejectCorporateAction,
    ValidateCorporateAction,
)
from example_app.corporate_actions import (
    MAX_SPLIT_RATIO,
    ActionStatus,
    CashTerms,
    CorporateAction,
    CorporateActionAnnounced,
    CorporateActionCancelled,
    CorporateActionRejected,
    CorporateActionValidated,
    SplitTerms,
    Terms,
)
from example_app.handlers import router
from example_app.securities import Security, SecurityRegistered
from framework import (
    AggregateNotFound,
    AlreadyExists,
    Event,
    InvalidCommand,
    InvalidTransition,
    RuleViolation,
)
from framework.testing import CommandSpec, given

from .domain import APPLE, SAP

RECORD = date(2024, 6, 14)
PAY = date(2024, 6, 28)
DIVIDEND = CashTerms(kind="cash_dividend", amount_per_unit=Decimal("0.25"), currency="USD")
SPLIT = SplitTerms(kind="stock_split", new_units=4, old_units=1)

ANNOUNCED = CorporateActionAnnounced(
    action_id="CA-1", isin=APPLE, record_date=RECORD, payment_date=PAY, terms=DIVIDEND
)
VALIDATED = CorporateActionValidated(action_id="CA-1")
REJECTED = CorporateActionRejected(action_id="CA-1", reasons=["wrong amount"])
CANCELLED = CorporateActionCancelled(action_id="CA-1", reason="withdrawn by issuer")

HISTORIES: dict[str, tuple[Event, ...]] = {
    "announced": (ANNOUNCED,),
    "validated": (ANNOUNCED, VALIDATED),
    "rejected": (ANNOUNCED, REJECTED),
    "cancelled": (ANNOUNCED, CANCELLED),
    "validated_then_cancelled": (ANNOUNCED, VALIDATED, CANCELLED),
}


# --- announcing ------------------------------------------------------------------------------


def announce(payment_date: date | None = PAY, terms: Any = DIVIDEND) -> CorporateAction:
    return CorporateAction.announce("CA-1", APPLE, RECORD, payment_date, terms)


def test_announce_records_the_action() -> None:
    given(CorporateAction).when(lambda _: announce()).then(ANNOUNCED)


def test_announced_state() -> None:
    action = announce(terms=SPLIT)
    assert action.status is ActionStatus.ANNOUNCED
    assert (action.isin, action.record_date, action.payment_date, action.terms) == (APPLE, RECORD, PAY, SPLIT)
    assert action.id == CorporateAction.id_for("CA-1")


def test_payment_date_before_record_date_is_refused() -> None:
    given(CorporateAction).when(lambda _: announce(payment_date=date(2024, 6, 13))).then_raises(
        RuleViolation, match="before record date", reason="payment_before_record_date"
    )


def test_a_split_above_the_ratio_limit_is_refused() -> None:
    # More than 1,000 new units per unit held: no real split, and new units would outgrow a bigint.
    too_many = SplitTerms(kind="stock_split", new_units=MAX_SPLIT_RATIO * 3 + 1, old_units=3)
    given(CorporateAction).when(lambda _: announce(terms=too_many)).then_raises(
        RuleViolation, match="3001 for 3 gives more than 1000 new units", reason="split_ratio_out_of_range"
    )


@pytest.mark.parametrize(("new", "old"), [(MAX_SPLIT_RATIO, 1), (MAX_SPLIT_RATIO * 3, 3), (1, 2**62)])
def test_a_split_up_to_the_ratio_limit_and_any_reverse_split_are_allowed(new: int, old: int) -> None:
    terms = SplitTerms(kind="stock_split", new_units=new, old_units=old)
    given(CorporateAction).when(lambda _: announce(terms=terms)).then(
        ANNOUNCED.model_copy(update={"terms": terms})
    )


def test_payment_on_the_record_date_is_allowed() -> None:
    given(CorporateAction).when(lambda _: announce(payment_date=RECORD)).then(
        ANNOUNCED.model_copy(update={"payment_date": RECORD})
    )


def test_payment_date_is_optional() -> None:
    given(CorporateAction).when(lambda _: announce(payment_date=None, terms=SPLIT)).then(
        CorporateActionAnnounced(
            action_id="CA-1", isin=APPLE, record_date=RECORD, payment_date=None, terms=SPLIT
        )
    )


# --- terms: a discriminated union ------------------------------------------------------------

TERMS: TypeAdapter[Any] = TypeAdapter(Terms)


@pytest.mark.parametrize("kind", ["cash_dividend", "coupon"])
def test_cash_terms_are_chosen_by_kind(kind: str) -> None:
    terms = TERMS.validate_python({"kind": kind, "amount_per_unit": "1.5", "currency": "EUR"})
    assert isinstance(terms, CashTerms)
    assert terms.amount_per_unit == Decimal("1.5")


def test_split_terms_are_chosen_by_kind() -> None:
    assert TERMS.validate_python({"kind": "stock_split", "new_units": 3, "old_units": 2}) == SplitTerms(
        kind="stock_split", new_units=3, old_units=2
    )


@pytest.mark.parametrize(
    "terms",
    [
        {"kind": "cash_dividend", "amount_per_unit": "0", "currency": "USD"},
        {"kind": "cash_dividend", "amount_per_unit": "-1", "currency": "USD"},
        {"kind": "cash_dividend", "amount_per_unit": "0.0000001", "currency": "USD"},  # 7 decimals
        {"kind": "coupon", "amount_per_unit": "1", "currency": "usd"},
        {"kind": "cash_dividend", "amount_per_unit": "1"},  # no currency
        {"kind": "stock_split", "new_units": 0, "old_units": 1},
        {"kind": "stock_split", "new_units": 2, "old_units": -1},
        # fields of the other member are not accepted: the kind decides the shape
        {"kind": "stock_split", "amount_per_unit": "1", "currency": "USD"},
        {"kind": "cash_dividend", "new_units": 2, "old_units": 1},
        {"kind": "rights_issue", "amount_per_unit": "1", "currency": "USD"},
        {"amount_per_unit": "1", "currency": "USD"},  # no kind at all
    ],
)
def test_bad_terms_are_rejected(terms: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        TERMS.validate_python(terms)


def announce_payload(**changes: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "action_id": "CA-1",
        "isin": APPLE,
        "record_date": "2024-06-14",
        "payment_date": "2024-06-28",
        "terms": {"kind": "cash_dividend", "amount_per_unit": "0.25", "currency": "USD"},
    }
    payload.update(changes)
    return payload


def test_the_announce_command_parses_terms_by_kind() -> None:
    command = router.parse("AnnounceCorporateAction", announce_payload())
    assert isinstance(command, AnnounceCorporateAction)
    assert command.terms == DIVIDEND
    split_terms = {"kind": "stock_split", "new_units": 4, "old_units": 1}
    split = router.parse("AnnounceCorporateAction", announce_payload(terms=split_terms))
    assert isinstance(split, AnnounceCorporateAction)
    assert split.terms == SPLIT


def test_an_unknown_kind_is_reported_on_the_terms_field() -> None:
    with pytest.raises(InvalidCommand) as caught:
        router.parse("AnnounceCorporateAction", announce_payload(terms={"kind": "rights_issue"}))
    assert [e.path for e in caught.value.errors] == ["/terms"]
    assert "rights_issue" in caught.value.errors[0].message


def test_a_bad_term_is_reported_with_its_field_path() -> None:
    bad = announce_payload(terms={"kind": "cash_dividend", "amount_per_unit": "-1", "currency": "USD"})
    with pytest.raises(InvalidCommand) as caught:
        router.parse("AnnounceCorporateAction", bad)
    assert [e.path for e in caught.value.errors] == ["/terms/amount_per_unit"]


def test_a_bad_term_is_reported_under_the_terms_field() -> None:
    """What holds today, whichever way the tag question above is settled."""
    bad = announce_payload(terms={"kind": "cash_dividend", "amount_per_unit": "-1", "currency": "USD"})
    with pytest.raises(InvalidCommand) as caught:
        router.parse("AnnounceCorporateAction", bad)
    (error,) = caught.value.errors
    assert error.path.startswith("/terms/")
    assert error.path.endswith("/amount_per_unit")
    assert "greater than 0" in error.message


@pytest.mark.parametrize(
    ("changes", "path"),
    [
        ({"record_date": "2024-02-30"}, "/record_date"),
        ({"record_date": "yesterday"}, "/record_date"),
        ({"payment_date": "2024-13-01"}, "/payment_date"),
        ({"isin": "US0378331006"}, "/isin"),
        ({"action_id": ""}, "/action_id"),
        ({"unexpected": 1}, "/unexpected"),
    ],
)
def test_announce_command_field_paths(changes: dict[str, Any], path: str) -> None:
    with pytest.raises(InvalidCommand) as caught:
        router.parse("AnnounceCorporateAction", announce_payload(**changes))
    assert [e.path for e in caught.value.errors] == [path]


@pytest.mark.parametrize(
    ("terms", "path"),
    [
        ({"kind": "stock_split", "new_units": 2**63, "old_units": 1}, "/terms/new_units"),
        ({"kind": "stock_split", "new_units": 2, "old_units": 2**64}, "/terms/old_units"),
    ],
)
def test_split_units_beyond_64_bits_are_refused_at_their_path(terms: dict[str, Any], path: str) -> None:
    # SplitTerms is a plain model that only says gt=0: the command's 64-bit default bounds it above.
    with pytest.raises(InvalidCommand) as caught:
        router.parse("AnnounceCorporateAction", announce_payload(terms=terms))
    assert [(e.path, e.message) for e in caught.value.errors] == [(path, "must be at most 9223372036854775807")]


def test_a_huge_split_is_refused_by_the_rule_with_its_reason() -> None:
    huge = announce_command(terms={"kind": "stock_split", "new_units": 2**63 - 1, "old_units": 1})
    spec().when(huge).then_raises(RuleViolation, reason="split_ratio_out_of_range")


def test_missing_fields_are_all_reported() -> None:
    with pytest.raises(InvalidCommand) as caught:
        router.parse("AnnounceCorporateAction", {"action_id": "CA-1"})
    assert sorted(e.path for e in caught.value.errors) == ["/isin", "/record_date", "/terms"]


@pytest.mark.parametrize("reasons", [[], [""], ["   "], ["x" * 501], ["r"] * 21])
def test_reject_needs_one_to_twenty_non_blank_reasons(reasons: list[str]) -> None:
    with pytest.raises(InvalidCommand) as caught:
        router.parse("RejectCorporateAction", {"action_id": "CA-1", "reasons": reasons})
    assert all(e.path.startswith("/reasons") for e in caught.value.errors)


# --- the state machine -----------------------------------------------------------------------


def test_validate_an_announced_action() -> None:
    given(CorporateAction, ANNOUNCED).when(lambda a: a.validate_action()).then(VALIDATED)


def test_reject_an_announced_action() -> None:
    given(CorporateAction, ANNOUNCED).when(lambda a: a.reject(["wrong amount"])).then(REJECTED)


@pytest.mark.parametrize("history", ["announced", "validated"])
def test_cancel_an_announced_or_validated_action(history: str) -> None:
    given(CorporateAction, *HISTORIES[history]).when(lambda a: a.cancel(CANCELLED.reason)).then(CANCELLED)


@pytest.mark.parametrize(
    ("history", "status"),
    [
        ("announced", ActionStatus.ANNOUNCED),
        ("validated", ActionStatus.VALIDATED),
        ("rejected", ActionStatus.REJECTED),
        ("cancelled", ActionStatus.CANCELLED),
        ("validated_then_cancelled", ActionStatus.CANCELLED),
    ],
)
def test_status_follows_the_events(history: str, status: ActionStatus) -> None:
    action = CorporateAction.from_events(CorporateAction.id_for("CA-1"), HISTORIES[history])
    assert action.status is status


@pytest.mark.parametrize("history", ["validated", "rejected", "cancelled", "validated_then_cancelled"])
def test_validate_only_from_announced(history: str) -> None:
    status = CorporateAction.from_events(CorporateAction.id_for("CA-1"), HISTORIES[history]).status
    given(CorporateAction, *HISTORIES[history]).when(lambda a: a.validate_action()).then_raises(
        InvalidTransition, match="cannot validate", reason=f"action_{status.value}"
    )


@pytest.mark.parametrize("history", ["validated", "rejected", "cancelled"])
def test_reject_only_from_announced(history: str) -> None:
    given(CorporateAction, *HISTORIES[history]).when(lambda a: a.reject(["late"])).then_raises(
        InvalidTransition, match="cannot reject", reason=f"action_{history}"
    )


@pytest.mark.parametrize("history", ["rejected", "cancelled", "validated_then_cancelled"])
def test_cancel_not_from_rejected_or_cancelled(history: str) -> None:
    status = CorporateAction.from_events(CorporateAction.id_for("CA-1"), HISTORIES[history]).status
    given(CorporateAction, *HISTORIES[history]).when(lambda a: a.cancel("again")).then_raises(
        InvalidTransition, match="cannot cancel", reason=f"action_{status.value}"
    )


def test_invalid_transition_is_a_rule_violation() -> None:
    assert issubclass(InvalidTransition, RuleViolation)


# --- the handlers ----------------------------------------------------------------------------


def spec(*action_events: Event) -> CommandSpec:
    spec = CommandSpec(router).given(
        Security, Security.id_for(APPLE), SecurityRegistered(isin=APPLE, name="Apple", currency="USD")
    )
    if action_events:
        spec.given(CorporateAction, CorporateAction.id_for("CA-1"), *action_events)
    return spec


def announce_command(**changes: Any) -> AnnounceCorporateAction:
    command = router.parse("AnnounceCorporateAction", announce_payload(**changes))
    assert isinstance(command, AnnounceCorporateAction)
    return command


def test_announce_command() -> None:
    spec().when(announce_command()).then(ANNOUNCED)


def test_announce_for_an_unknown_security_raises_not_found() -> None:
    spec().when(announce_command(isin=SAP)).then_raises(AggregateNotFound, match=SAP)


def test_announce_with_payment_before_record_date_is_refused() -> None:
    spec().when(announce_command(payment_date="2024-06-01")).then_raises(
        RuleViolation, reason="payment_before_record_date"
    )


def test_announcing_the_same_action_twice_raises_already_exists() -> None:
    spec(ANNOUNCED).when(announce_command()).then_raises(AlreadyExists, match="CA-1")


def test_validate_command() -> None:
    spec(ANNOUNCED).when(ValidateCorporateAction(action_id="CA-1")).then(VALIDATED)


def test_reject_command() -> None:
    spec(ANNOUNCED).when(RejectCorporateAction(action_id="CA-1", reasons=["wrong amount"])).then(REJECTED)


def test_cancel_command_after_validation() -> None:
    command = CancelCorporateAction(action_id="CA-1", reason="withdrawn by issuer")
    spec(ANNOUNCED, VALIDATED).when(command).then(CANCELLED)


def test_validate_twice_is_an_invalid_transition() -> None:
    spec(ANNOUNCED, VALIDATED).when(ValidateCorporateAction(action_id="CA-1")).then_raises(
        InvalidTransition, reason="action_validated"
    )


def test_cancel_after_rejection_is_an_invalid_transition() -> None:
    spec(ANNOUNCED, REJECTED).when(CancelCorporateAction(action_id="CA-1", reason="x")).then_raises(
        InvalidTransition, reason="action_rejected"
    )


@pytest.mark.parametrize(
    "command",
    [
        ValidateCorporateAction(action_id="CA-404"),
        RejectCorporateAction(action_id="CA-404", reasons=["x"]),
        CancelCorporateAction(action_id="CA-404", reason="x"),
    ],
)
def test_commands_on_an_unknown_action_raise_not_found(command: Any) -> None:
    spec(ANNOUNCED).when(command).then_raises(AggregateNotFound, match="CA-404")
