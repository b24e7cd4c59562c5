"""Bringing a cluster up: config, model cache, placement, API server, CLI."""
