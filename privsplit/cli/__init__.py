"""Command-line interface; see :mod:`privsplit.cli.main`."""
