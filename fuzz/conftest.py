"""Hypothesis profiles for the fuzz suite.

The test modules apply ``settings.get_profile(MMAPKV_FUZZ_PROFILE or "ci")`` to each test.

* ``ci`` (the default): a fixed seed (derandomized) and few examples, so the whole fuzz/
  directory runs in about a minute on two cores and a failure reproduces exactly.
* ``long``: many more examples and longer state-machine runs, random seeds (hypothesis
  prints the seed and the shrunk failing program).  Select it with
  ``MMAPKV_FUZZ_PROFILE=long``; ``MMAPKV_FUZZ_EXAMPLES=N`` overrides its example count.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

from tests.redis_fixtures import redis_server  # noqa: F401  (a real server for RedisStoreMachine)

_SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]

settings.register_profile(
    "ci",
    max_examples=300,
    stateful_step_count=60,
    derandomize=True,
    deadline=None,
    print_blob=True,
    suppress_health_check=_SLOW_OK,
)
settings.register_profile(
    "long",
    max_examples=int(os.environ.get("MMAPKV_FUZZ_EXAMPLES", "2000")),
    stateful_step_count=120,
    deadline=None,
    print_blob=True,
    suppress_health_check=_SLOW_OK,
)

#: the profile the fuzz tests run under; they apply it themselves (``settings(parent=...)``)
#: rather than loading it globally, so hypothesis tests elsewhere keep their own settings
PROFILE_NAME = os.environ.get("MMAPKV_FUZZ_PROFILE", "ci")
if PROFILE_NAME not in ("ci", "long"):
    raise ValueError(f"MMAPKV_FUZZ_PROFILE must be 'ci' or 'long', not {PROFILE_NAME!r}")
