"""Fault points: named places where a test can make this process die, to prove nothing is lost there.

``EVENTFOLD_FAULTS`` (read with the settings; the CLI arms it when a process starts) names the
points to arm, comma-separated, each optionally with the hit that fires it: ``command.claimed@3``
kills the process with SIGKILL the third time a command's idempotency key is claimed. Unarmed
(the default, and in production), a fault point is one dictionary lookup on an empty dict.

Points: ``batch.committed`` (a projection batch committed, before anything else),
``command.claimed`` (a command's idempotency key claimed, nothing appended yet),
``command.appended`` (its events and key committed, the outbox entry not yet forgotten),
``dispatch.forgotten`` (executed outbox entries forgotten).
"""

from __future__ import annotations

import os
import signal
import threading

__all__ = ["arm_faults", "fault_point"]


def _armed(spec: str) -> dict[str, int]:
    points: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, hit = item.partition("@")
        points[name] = int(hit) if hit.isdigit() and int(hit) > 0 else 1
    return points


_ARMED: dict[str, int] = {}
_hits: dict[str, int] = {}
_lock = threading.Lock()


def arm_faults(spec: str) -> None:
    """Arm the points ``spec`` names (``EVENTFOLD_FAULTS``), counting their hits from now."""
    with _lock:
        _ARMED.clear()
        _ARMED.update(_armed(spec))
        _hits.clear()


def fault_point(name: str) -> None:
    """Die here (SIGKILL, no clean-up, like a crash) if ``name`` is armed and this is its hit."""
    if not _ARMED or name not in _ARMED:
        return
    with _lock:
        _hits[name] = _hits.get(name, 0) + 1
        if _hits[name] == _ARMED[name]:
            os.kill(os.getpid(), signal.SIGKILL)
