"""Partitions: a stable hash of the key, power-of-two counts, the bus filter of one partition."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest

from framework.adapters.nats import message_for, partition_filter
from framework.errors import ConfigurationError
from framework.partitions import Partition, bucket_of, bucket_tokens, check_partition_count, partition_of
from framework.projector import Projector, with_partitions
from framework.settings import Settings
from framework.store import Notification
from projections.holdings import HoldingsProjector

KEYS = [str(uuid.UUID(int=i * 7919)) for i in range(200)]

_SCRIPT = ("import json, sys; from framework.partitions import partition_of; "
           "print(json.dumps([partition_of(k, 8) for k in json.loads(sys.stdin.read())]))")


def _partitions_in_a_process(seed: str) -> list[int]:
    env = {**os.environ, "PYTHONHASHSEED": seed}
    done = subprocess.run([sys.executable, "-c", _SCRIPT], input=json.dumps(KEYS), capture_output=True, text=True,
                          env=env, check=True, timeout=60)
    return list(json.loads(done.stdout))


def test_the_same_key_maps_to_the_same_partition_in_processes_with_different_hash_seeds() -> None:
    first, second = _partitions_in_a_process("1"), _partitions_in_a_process("4242")
    assert first == second == [partition_of(k, 8) for k in KEYS]
    assert len(set(first)) == 8  # 200 keys spread over every partition


def test_a_partition_of_n_is_a_run_of_buckets_and_halving_the_count_merges_neighbours() -> None:
    for key in KEYS:
        assert partition_of(key, 1) == 0
        assert partition_of(key, 256) == bucket_of(key)
        assert partition_of(key, 4) == partition_of(key, 8) // 2
        assert Partition(partition_of(key, 8), 8).holds(key)


@pytest.mark.parametrize("count", [0, 3, 6, 512, -1, 2.0, True, "8"])
def test_a_count_that_is_not_a_power_of_two_up_to_256_is_refused_by_name(count: object) -> None:
    with pytest.raises(ConfigurationError, match="power of two"):
        check_partition_count("holdings", count)


def test_a_projector_declaring_a_bad_count_fails_when_its_class_is_defined() -> None:
    with pytest.raises(ConfigurationError, match="bad: partitions must be a power of two"):
        type("Bad", (Projector,), {"name": "bad", "partitions": 3})


def test_the_subject_carries_the_bucket_and_one_partition_is_one_filter_subject() -> None:
    for key in KEYS[:50]:
        notification = Notification(id=1, originator_id=uuid.UUID(key), originator_version=1, topic="T",
                                    state=b"{}")
        subject, _ = message_for(notification, "ef.events")
        tokens = subject.split(".")
        assert tokens[4:] == list(bucket_tokens(key))
        for count in (1, 2, 8, 256):
            index = partition_of(key, count)
            for other in range(count):
                assert _matches(partition_filter("ef.events", Partition(other, count)), subject) == (other == index)


def _matches(pattern: str, subject: str) -> bool:
    wanted, tokens = pattern.split("."), subject.split(".")
    for i, token in enumerate(wanted):
        if token == ">":
            return len(tokens) > i
        if i >= len(tokens) or token not in ("*", tokens[i]):
            return False
    return len(tokens) == len(wanted)


def test_eventfold_partitions_sets_counts_and_names_a_bad_one() -> None:
    settings = Settings.from_env({"EVENTFOLD_PARTITIONS": "holdings=8, cards=1"})
    assert settings.partitions == (("holdings", 8), ("cards", 1))
    with pytest.raises(ConfigurationError, match="EVENTFOLD_PARTITIONS: holdings=6"):
        Settings.from_env({"EVENTFOLD_PARTITIONS": "holdings=6"})
    with pytest.raises(ConfigurationError, match="projection=count"):
        Settings.from_env({"EVENTFOLD_PARTITIONS": "holdings"})


def test_with_partitions_changes_only_the_count() -> None:
    projector = HoldingsProjector()
    split = with_partitions(projector, 16)
    assert split.partitions == 16 and split.name == "holdings" and isinstance(split, HoldingsProjector)
    assert split.handled_event_names() == projector.handled_event_names()
    assert with_partitions(projector, projector.partitions) is projector
