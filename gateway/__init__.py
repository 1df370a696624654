"""gateway: guards existing HTTP APIs with tokens."""

__version__ = "0.1.0"
