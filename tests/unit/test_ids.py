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


def test_random_uuid_texts_are_what_str_makes_of_version_4_uuids():
    from uuid import UUID

    from framework.ids import random_uuid_text

    texts = [random_uuid_text() for _ in range(1000)]
    assert len(set(texts)) == len(texts)
    parsed = [UUID(t) for t in texts]
    assert [str(p) for p in parsed] == texts  # the canonical form: lower case, hyphens where str puts them
    assert {p.version for p in parsed} == {4}
    assert {p.variant for p in parsed} == {"specified in RFC 4122"}
