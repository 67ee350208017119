"""Across runs: a leaderboard (compare) and judge reliability (agreement), from the files a
finished run leaves (run_files)."""
