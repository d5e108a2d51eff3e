"""Hypothesis settings of the core suite: deterministic (derandomized, no example
database), modest example counts, no deadline (CI machines are noisy).

Imported by the property modules; nothing here touches Hypothesis' global profile, so
other test modules keep their own settings. For a longer bug hunt:
`FLAPGUARD_HYPOTHESIS_EXAMPLES=2000 FLAPGUARD_HYPOTHESIS_RANDOM=1 pytest tests/core/test_properties.py`.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_EXAMPLES = int(os.environ.get("FLAPGUARD_HYPOTHESIS_EXAMPLES") or 0)
_RANDOM = os.environ.get("FLAPGUARD_HYPOTHESIS_RANDOM", "") not in ("", "0")

CORE = settings(
    max_examples=_EXAMPLES or 60,
    derandomize=not _RANDOM,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
CORE_SLOW = settings(CORE, max_examples=_EXAMPLES or 30)
