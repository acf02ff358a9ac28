"""schemathesis hooks for tests/integration/test_fuzz.py (named by SCHEMATHESIS_HOOKS).

A followed log (``?follow=1`` on a function's or a job's logs) is a stream that ends only when its
reader leaves, by design, as ``kubectl logs -f`` does: a request/response fuzzer would wait for it until
its timeout. Its generated value is replaced by ``0``; every other part of those requests is fuzzed as
drawn, and test_observability follows a log for real.
"""

from __future__ import annotations

from typing import Any

import schemathesis


@schemathesis.hook
def map_query(context: Any, query: dict[str, Any] | None) -> dict[str, Any] | None:
    if query and "follow" in query:
        query["follow"] = "0"
    return query
