"""`python -m deerluma`: the same as the `deerluma` command."""

from .cli import run

run()
