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
