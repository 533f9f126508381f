"""Registers the ``ostracker`` executor with PSI/J (README, "PSI/J").

psij finds this module in the ``psij-descriptors`` namespace package of any
``sys.path`` entry, and loads the class from ``ostracker/psij.py`` beside it:
so this directory is installed next to the ``ostracker`` package (pyproject's
``packages``), and has no ``__init__.py``.
"""

from packaging.version import Version
from psij.descriptor import Descriptor

from ostracker import __version__

__PSI_J_EXECUTORS__ = [
    Descriptor(name="ostracker", nice_name="ostracker", version=Version(__version__),
               cls="ostracker.psij.OstrackerExecutor"),
]
