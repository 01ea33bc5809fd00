"""Placeholder: replaced by its implementation."""


def register(sub):
    """No subcommand yet."""
