"""The `thingward` command line: thin typer commands, one module per noun."""
