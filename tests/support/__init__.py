"""Helpers shared by the tests: real peers, databases, a gateway, the CLI, a Ray cluster."""
