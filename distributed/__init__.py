"""Runs past one machine: Ray Data (``heatmap.distributed.ray``)."""
