"""The analyst console in Jupyter, built with ipywidgets on the Manager API.

>>> from optin.console import open_console    # doctest: +SKIP
>>> console = open_console()                  # doctest: +SKIP
>>> console                                   # doctest: +SKIP

Needs the ``notebook`` extra: ``pip install 'optin[notebook]'``.
"""

from __future__ import annotations

from optin.serving import require_extra

require_extra("ipywidgets", "notebook")

from optin.console.app import Console  # noqa: E402
from optin.console.launch import open_console  # noqa: E402

__all__ = ["Console", "open_console"]
