"""`python -m navig.client.cli_main` runs the `navig` command (for environments without the script)."""

from navig.client.cli import app

if __name__ == "__main__":
    app()
