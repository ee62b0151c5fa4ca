"""The sandboxed child that runs a python grader (started by ``slmtune.graders.sandbox``; never imported by slmtune).

Reads one JSON payload from stdin — the source, the cases, the limits — then, before any user code runs:

1. resource limits: address space, CPU seconds, no file writes of any size (RLIMIT_FSIZE 0), few descriptors;
2. Landlock (the kernel's file-access sandbox, through the ``landlock`` package): read-only access to the Python
   installation, nothing else — not the server's database, not other projects' files, not ``/proc`` or ``/etc``;
3. seccomp (libseccomp, through ``pyseccomp``): no sockets (so no network, no UNIX-socket database), no new
   processes (fork, clone without CLONE_THREAD, exec), no signals to other processes, no ptrace, mounts,
   namespaces, kernel keyrings or changes of user. Both apply to root too: the child keeps the server's user (the
   Python installation may be readable by that user alone).

Then it defines ``grade`` from the source and writes one JSON line per case to the result pipe (not stdout: the
grader's prints go to /dev/null). Its environment is empty and its working directory an empty folder; the parent
enforces the wall-clock limit and caps what it reads back.
"""

import collections  # noqa: F401
import errno
import json
import math
import os
import resource
import sys
import traceback

# imported before the limits apply (ctypes finds the libraries through temporary files and a compiler)
import pyseccomp
from landlock import Ruleset
from landlock.plumbing import FSAccess


def main() -> None:
    payload = json.loads(sys.stdin.buffer.read())
    out = os.fdopen(os.dup(1), "w", buffering=1)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.dup2(null, 2)
    sys.stdout = sys.stderr = open(os.devnull, "w")
    lim = payload["limits"]
    try:
        confine(lim)
    except Exception as e:  # noqa: BLE001 - any failure to confine means no user code runs
        out.write(json.dumps({"fatal": f"sandbox setup failed: {type(e).__name__}: {e}"}) + "\n")
        return
    namespace = {"__name__": "grader", "__builtins__": __builtins__}
    try:
        exec(compile(payload["source"], "<grader>", "exec"), namespace)
        grade = namespace.get("grade")
        if not callable(grade):
            raise TypeError("the source defines no function grade(sample, item)")
    except BaseException as e:  # noqa: BLE001 - reported to the parent as the grader's error
        out.write(json.dumps({"fatal": _describe(e)}) + "\n")
        return
    for i, case in enumerate(payload["cases"]):
        try:
            value = grade(case["sample"], case["item"])
            if isinstance(value, bool):
                value = float(value)
            if not isinstance(value, int | float) or not math.isfinite(value):
                raise TypeError(f"grade() returned {type(value).__name__} {str(value)[:40]!r}; a finite number is "
                                "expected")
            out.write(json.dumps({"i": i, "score": float(value)}) + "\n")
        except BaseException as e:  # noqa: BLE001 - an exception scores 0 and is counted by the parent
            out.write(json.dumps({"i": i, "error": _describe(e)}) + "\n")
    out.write(json.dumps({"done": True}) + "\n")


def _describe(e: BaseException) -> str:
    lines = traceback.format_exception(type(e), e, e.__traceback__)
    text = "".join(line for line in lines if 'File "<grader>"' in line or not line.startswith("  File "))
    return text[-2000:]


def confine(lim: dict) -> None:
    mem = lim["memory_mb"] * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    resource.setrlimit(resource.RLIMIT_CPU, (lim["cpu_s"], lim["cpu_s"] + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    _landlock(lim["read_paths"])
    _seccomp()


def _landlock(read_paths: list) -> None:
    rules = Ruleset()  # every file-system access the kernel's ABI knows is handled: denied unless allowed below
    for path in read_paths:
        if os.path.exists(path):
            rules.allow(path, rules=FSAccess.READ_FILE | FSAccess.READ_DIR | FSAccess.EXECUTE
                        if os.path.isdir(path) else FSAccess.READ_FILE | FSAccess.EXECUTE)
    rules.apply()


def _seccomp() -> None:
    sc = pyseccomp
    f = sc.SyscallFilter(defaction=sc.ALLOW)
    deny = sc.ERRNO(errno.EPERM)
    for name in ("socket", "socketpair", "connect", "bind", "listen", "accept", "accept4", "fork", "vfork",
                 "execve", "execveat", "ptrace", "process_vm_readv", "process_vm_writev", "mount", "umount2",
                 "pivot_root", "chroot", "unshare", "setns", "tkill", "pidfd_open", "pidfd_send_signal",
                 "pidfd_getfd", "bpf", "perf_event_open", "keyctl", "add_key", "request_key", "kexec_load",
                 "init_module", "finit_module", "delete_module", "reboot", "swapon", "swapoff", "userfaultfd",
                 "io_uring_setup", "personality", "setuid", "setgid", "setreuid", "setregid", "setresuid",
                 "setresgid", "setgroups", "capset", "chown", "fchown", "fchownat", "lchown", "open_by_handle_at",
                 "name_to_handle_at", "mknod", "mknodat"):
        try:
            f.add_rule(deny, name)
        except (ValueError, OSError):  # a syscall this architecture lacks
            pass
    clone_thread = 0x00010000
    f.add_rule(deny, "clone", sc.Arg(0, sc.MASKED_EQ, clone_thread, 0))  # a new process, not a thread
    f.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")  # glibc then falls back to clone, filtered above
    pid = os.getpid()
    f.add_rule(deny, "kill", sc.Arg(0, sc.NE, pid))
    f.add_rule(deny, "tgkill", sc.Arg(0, sc.NE, pid))
    f.load()


if __name__ == "__main__":
    main()
