"""Import Flower once, with telemetry off and a clear error when the extra is missing."""

from __future__ import annotations

import os

# Flower reads this when its telemetry module is first imported; Ray workers inherit it.
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

INSTALL_HINT = "pip install 'fedkit[flower]'  (flwr[simulation]==1.42.0, which brings Ray)"

try:
    import flwr
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError(f"fedkit.compat.flower needs Flower: {INSTALL_HINT}") from e

FLWR_VERSION: str = str(flwr.__version__)
