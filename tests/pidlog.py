"""Test helper: `python tests/pidlog.py PIDFILE [--with-child] COMMAND...`.

Appends this process's pid to PIDFILE, optionally starts a child process that
stays in the same process group (as vLLM starts its engine workers) and records
its pid too, then becomes COMMAND with exec (so the recorded pid is the server).
Tests use it to find every process a managed server left, and prove none survive.
"""

from __future__ import annotations

import os
import subprocess
import sys


def main() -> None:
    pid_file, args = sys.argv[1], sys.argv[2:]
    pids = [os.getpid()]
    if args and args[0] == "--with-child":
        args = args[1:]
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        pids.append(child.pid)
    with open(pid_file, "a", encoding="utf-8") as fh:
        fh.write("".join(f"{p}\n" for p in pids))
    os.execvp(args[0], args)


if __name__ == "__main__":
    main()
