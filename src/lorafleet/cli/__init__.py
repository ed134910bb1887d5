"""The `lorafleet` command line: thin Typer commands that call the library."""
