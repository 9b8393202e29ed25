"""Prometheus metrics of one server, in a registry of its own (so tests can run several servers).

Broker and ingest figures are read at scrape time by a collector in `thingward.server`."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.enrollments = Counter(
            "thingward_enrollments", "Enrollment requests by result", ["result"], registry=self.registry
        )
        self.policy_reloads = Counter(
            "thingward_policy_reloads", "Times the policy world was recompiled", registry=self.registry
        )
        self.sessions_dropped = Counter(
            "thingward_sessions_dropped",
            "Live MQTT sessions dropped after revocation or policy change",
            registry=self.registry,
        )
