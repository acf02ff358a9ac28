"""The cluster backend: KServe InferenceServices on Knative, training through Jobs / JobSinks."""
