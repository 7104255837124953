"""Allow `python -m edgeeff`."""

from edgeeff.cli import main

main()
