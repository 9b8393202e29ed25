"""thingward: a self-hosted, secure-by-default IoT platform."""

__version__ = "0.1.0"
