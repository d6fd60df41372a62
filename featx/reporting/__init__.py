"""Reporting: the comparison table, the HTML/Markdown report, and heatmaps of where evidence lies."""
