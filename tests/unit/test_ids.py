import os

from framework.ids import random_uuid


def test_random_uuids_are_version_4_and_distinct():
    ids = [random_uuid() for _ in range(1000)]  # more than one refill of the buffer
    assert len(set(ids)) == len(ids)
    assert {i.version for i in ids} == {4}
    assert {i.variant for i in ids} == {"specified in RFC 4122"}


def test_a_forked_child_does_not_repeat_the_parents_ids():
    random_uuid()  # the parent's buffer is filled
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next id, then out
        os.write(write, random_uuid().bytes)
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 16)
    os.close(read), os.close(write)
    assert child != random_uuid().bytes
