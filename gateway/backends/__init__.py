"""Backends: the one place that knows how to send a request to a deployment and stream its answer."""
