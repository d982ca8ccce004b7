"""pid 1 of every vc2 container: runs the command as its child and exits with its status.

A program that is itself pid 1 gets no default signal actions (xvfb-run then waits forever for Xvfb's
SIGUSR1), and a shell as pid 1 prints "Aborted" for a child killed by a signal, which bwrap's own init
does not; this mirrors bwrap: status 128 + n for a child killed by signal n, nothing printed. Runs under
the image's python3 with -I -S; imports nothing of vc2.
"""
import subprocess
import sys

try:
    rc = subprocess.call(sys.argv[1:])
except OSError as e:  # the engines' wording, which executors.common reads as an infra error
    print(f"vc2 container init: executable file not found: {sys.argv[1]}: {e}", file=sys.stderr)
    sys.exit(127)
sys.exit(128 - rc if rc < 0 else rc)
