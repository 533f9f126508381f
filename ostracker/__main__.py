"""``python -m ostracker``: the same as the ``ostracker`` command."""

from .cli import main

main()
