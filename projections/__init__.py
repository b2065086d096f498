"""The example domain's read side: read models, projectors and process managers.

Empty on purpose for now: the projection runtime (relay to NATS JetStream,
projection workers, replay) is the next piece of work (issue #3), and the
read models of this package arrive with it.
"""
