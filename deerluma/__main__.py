"""`python -m deerluma`: the same as the `deerluma` command."""

from ._cli import run

run()
