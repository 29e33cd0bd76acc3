"""One module per command group; edgectl/cli.py registers each module's COMMANDS."""
