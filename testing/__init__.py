"""Helpers for testing with vit-heatmap: the pytest plugin and its heatmap_snapshot fixture."""
