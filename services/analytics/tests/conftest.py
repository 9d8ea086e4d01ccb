"""Makes ``factory`` (contract-event builders for analytics tests) importable by the
test modules (pytest runs with --import-mode=importlib: no sibling imports otherwise)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
