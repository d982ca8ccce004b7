"""Load vc2's seccomp filter, then exec a command: `python -I -S seccomp_exec.py FD COMMAND...`.

Used by the sandbox's unshare and plain modes (bwrap loads the same filter itself with --seccomp).
FD holds the BPF program that vc2.eval.sandbox.seccomp_bpf() made with libseccomp; filters survive
exec and are inherited by every child, so everything the command starts runs under it. Standard
library only: this runs before the interpreter may import anything else.
"""
import ctypes
import os
import sys

PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def main():
    fd, argv = int(sys.argv[1]), sys.argv[2:]
    with os.fdopen(fd, "rb") as f:
        bpf = f.read()
    assert bpf and len(bpf) % 8 == 0, "not a BPF program"
    buf = ctypes.create_string_buffer(bpf, len(bpf))
    prog = SockFprog(len(bpf) // 8, ctypes.cast(buf, ctypes.c_void_p))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 or \
            libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) != 0:
        print(f"seccomp_exec: cannot load the filter: {os.strerror(ctypes.get_errno())}", file=sys.stderr)
        return 125
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    sys.exit(main())
