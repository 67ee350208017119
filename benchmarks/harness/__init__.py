"""What every benchmark shares: child processes, simulated servers, measurement, tables.

- children: the checkout's environment for child processes, and one owner that stops them
- servers:  `python -m workers.simulated` processes, their /sim/stats, a poller of it
- measure:  the launcher that takes one process's wall time, CPU and peak RSS; `Bench`,
            which runs the evaluator and the comparison clients under it
- clients:  the comparison clients (`throughput.py _baseline`, `_reference`)
- tables:   medians, number formats, Markdown tables, report sections
- report:   the throughput report's head (host, sources hash, targets) and progress lines
"""
