"""`python3 -m orchestrator <verb>` from scripts/proof-workers/ (or with it on sys.path)."""
from __future__ import annotations

import sys
from pathlib import Path

# The package lives in scripts/proof-workers/; lib/ is at the checkout root.
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from orchestrator.cli import main  # noqa: E402

raise SystemExit(main())
