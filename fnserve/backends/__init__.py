"""Backends: where a function's replicas actually run (this machine, or a Knative cluster)."""
