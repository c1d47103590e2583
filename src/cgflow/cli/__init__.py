"""The `cgflow` command line: one typer app (:mod:`cgflow.cli.common`), one module per command group.

``cgflow.cli:app`` is the console entry point; importing this package registers every command."""

from importlib import import_module

from cgflow.cli.common import app

for _group in ("run", "baselines", "sweep", "tools", "validate"):  # registers the commands on app, in this order (--help)
    import_module(f"cgflow.cli.{_group}")

__all__ = ["app"]


def main() -> None:  # pragma: no cover
    app()
