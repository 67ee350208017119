"""Benchmarks of the evaluator against the SIMULATED server (see benchmarks/README.md).

A package so that the scripts share one harness (`benchmarks.harness`) and the throughput
benchmark's scenarios live apart (`benchmarks.scenarios`). The scripts are still run by path,
`python benchmarks/<script>.py`; each puts the checkout on sys.path first.
"""
