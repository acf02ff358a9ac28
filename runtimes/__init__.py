"""KServe custom predictors for fnserve functions, one module per model format.

Kept import-light on purpose: ``python -m runtimes.server`` must parse its own arguments before
kserve is imported, because kserve parses ``sys.argv`` at import time.
"""
