"""``python -m fnserve.cli``: the same command as the ``fnserve`` console script."""

from fnserve.cli import main

main()
