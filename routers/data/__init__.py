"""Routing data: loaders into one long format, and the wide prompts x models view."""
