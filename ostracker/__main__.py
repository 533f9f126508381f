"""``python -m ostracker``: the same as the ``ostracker`` command."""

from .command import main

main()
