"""``python -m clipsam`` runs the command line, like the ``clipsam`` script."""

from .cli import main

main()
