"""heatmap compare: map metrics and thresholds (metrics.py); the JUnit report and difference pictures (reports.py)."""
