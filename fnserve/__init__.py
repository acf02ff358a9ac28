"""fnserve: serverless, function-style model inference on Knative or one machine."""

__version__ = "0.1.0"
