"""The embedded backend: replicas are KServe ModelServer processes on this machine's loopback."""

from fnserve.backends.local.backend import LocalBackend

__all__ = ["LocalBackend"]
