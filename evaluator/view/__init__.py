"""`view DIR [DIR2 ...]`: a local, read-only web viewer of runs, pair by pair.

checkpoint.py reads a run's checkpoint without writing to it; index.py keeps a small side
index of every pair (scores, flags, status, search text) in a temporary directory; queries.py
pages and filters that index in SQL; pages.py renders HTML (jinja2, autoescaped); server.py
serves it with aiohttp on 127.0.0.1.
"""
