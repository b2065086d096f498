"""The leader/follower group committer on its own: who leads, who joins, what each request gets back."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Sequence

import pytest

from framework.adapters.group_commit import GroupCommit


class _Recorder:
    """A commit function that records its groups; the first group waits for ``release``."""

    def __init__(self, outcome: Callable[[str], str | BaseException] = lambda r: r.upper()) -> None:
        self.groups: list[list[str]] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self._outcome = outcome

    def __call__(self, group: Sequence[str]) -> list[str | BaseException]:
        self.groups.append(list(group))
        self.entered.set()
        if len(self.groups) == 1:
            assert self.release.wait(10)
        return [self._outcome(r) for r in group]


def _wait_until(condition: Callable[[], bool]) -> None:
    for _ in range(1000):
        if condition():
            return
        threading.Event().wait(0.01)
    raise AssertionError("condition not reached in 10 s")


def _submit_all(committer: GroupCommit[str, str], requests: list[str],
                answers: dict[str, object]) -> list[threading.Thread]:
    """Each request submitted from its own thread; its result or error lands in ``answers``."""

    def submit(request: str) -> None:
        try:
            answers[request] = committer.submit(request)
        except BaseException as error:  # the test compares errors too
            answers[request] = error

    threads = [threading.Thread(target=submit, args=(r,)) for r in requests]
    for thread in threads:
        thread.start()
    return threads


def test_a_lone_request_leads_at_once_in_a_group_of_one() -> None:
    commit = _Recorder()
    commit.release.set()
    committer = GroupCommit(commit)
    assert committer.submit("a") == "A"
    assert commit.groups == [["a"]]
    assert committer.group_sizes == Counter({1: 1})
    assert committer.waited == 0


def test_requests_arriving_during_a_commit_join_the_next_group_and_get_their_own_outcomes() -> None:
    def outcome(request: str) -> str | BaseException:
        return ValueError(request) if request == "bad" else request.upper()

    commit = _Recorder(outcome)
    committer = GroupCommit(commit)
    answers: dict[str, object] = {}
    threads = _submit_all(committer, ["lead"], answers)
    assert commit.entered.wait(10)
    threads += _submit_all(committer, ["b", "bad", "c"], answers)
    _wait_until(lambda: committer.waiting() == 3)
    commit.release.set()
    for thread in threads:
        thread.join(10)
    assert commit.groups[0] == ["lead"]
    assert sorted(commit.groups[1]) == ["b", "bad", "c"]
    assert {k: v for k, v in answers.items() if k != "bad"} == {"lead": "LEAD", "b": "B", "c": "C"}
    assert isinstance(answers["bad"], ValueError)
    assert committer.group_sizes == Counter({1: 1, 3: 1})
    assert committer.waited == 3
    assert committer.submit("again") == "AGAIN"  # nobody is committing any more: leads at once


def test_a_failed_commit_fails_every_request_of_its_group_and_the_next_group_still_runs() -> None:
    calls = 0

    def commit(group: Sequence[str]) -> list[str]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("server gone")
        return [r.upper() for r in group]

    committer = GroupCommit(commit)
    with pytest.raises(ConnectionError):
        committer.submit("a")
    assert committer.submit("b") == "B"


def test_when_a_whole_group_fails_every_request_gets_an_error_of_the_same_kind() -> None:
    """A store that went down is StoreUnavailable (503) for every request of the group, not a 500."""
    from framework.errors import StoreUnavailable

    first_done = threading.Event()

    def commit(group: Sequence[str]) -> list[str]:
        if not first_done.is_set():
            first_done.set()
            assert release.wait(10)
            return [r.upper() for r in group]
        raise StoreUnavailable("the event store is unavailable")

    release = threading.Event()
    committer = GroupCommit(commit)
    answers: dict[str, object] = {}
    threads = _submit_all(committer, ["lead"], answers)
    assert first_done.wait(10)
    threads += _submit_all(committer, ["b", "c", "d"], answers)
    _wait_until(lambda: committer.waiting() == 3)
    release.set()
    for thread in threads:
        thread.join(10)
    assert answers["lead"] == "LEAD"
    failed = [answers[r] for r in ("b", "c", "d")]
    assert all(isinstance(e, StoreUnavailable) and e.message == "the event store is unavailable" for e in failed)
    assert len({id(e) for e in failed}) == 3  # one instance each: no traceback shared between threads
