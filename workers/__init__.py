"""Wire protocols and backends. Knows nothing of VAL-Bench except the simulated backend."""
