"""The `navig` command line."""

from __future__ import annotations

import typer

from navig.export.cli import app as export_app

app = typer.Typer(help="navig-serve: Triton-served NAVIG geo-localization.", no_args_is_help=True)
app.add_typer(export_app, name="export")
