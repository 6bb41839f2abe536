"""``python -m miras`` runs the command line."""

from miras.cli import main

main()
