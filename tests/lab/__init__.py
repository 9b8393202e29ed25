"""Shared test infrastructure (importable because pytest puts tests/ on the path)."""
