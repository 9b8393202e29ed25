"""The registry: SQLAlchemy models and the service functions that change them (every door calls these)."""
