"""Makes ``running`` (``crm run`` as a subprocess) importable by the e2e tests."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
