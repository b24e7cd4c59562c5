"""tinsmith: a self-hostable implementation of the Tinker fine-tuning API on Ray."""

__version__ = "0.1.0"
