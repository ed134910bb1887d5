"""The `lorafleet` command line: thin Typer commands that call the library."""

from rich.console import Console


def plain_console() -> Console:
    """A console that prints paths and names as they are: no markup, no emoji codes, no highlighting."""
    return Console(markup=False, emoji=False, highlight=False)
