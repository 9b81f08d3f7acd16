"""The package version (one place; read by the CLI, checkpoints and exports)."""

__version__ = "0.1.0"
