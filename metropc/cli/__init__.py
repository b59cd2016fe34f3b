"""Command-line entry points of metropc; one module per command."""
