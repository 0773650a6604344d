"""The inference service's settings (``ServiceSettings`` in dkt/settings.py, where each variable is declared).

Read once, when the service module is imported: a bad value stops the service at start-up with one line,
``error: DKT_MAX_HISTORY='abc': ...``, exit 2.
"""

from __future__ import annotations

from dkt.settings import ServiceSettings, load_or_exit

settings: ServiceSettings = load_or_exit(ServiceSettings)
