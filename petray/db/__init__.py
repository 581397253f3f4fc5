"""Persistence: models, engine and data-access functions (callers own the transaction)."""
