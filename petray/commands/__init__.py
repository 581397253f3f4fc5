"""Implementations of the CLI commands."""
