"""Telemetry and events in: classify accepted messages, store them with bounded retention."""
