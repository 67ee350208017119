"""Prometheus metrics for a run: its registry and gauges (registry.RunMetrics), the hot-path
counts exported at scrape time (tallies), and the /metrics page (server)."""
