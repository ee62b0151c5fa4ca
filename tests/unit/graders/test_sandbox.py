"""A python grader runs in a sandboxed child: each escape a grader could try is contained, and the grading goes on.

The "server" here is this test process: its environment carries a secret, a file of its own holds a database, and
PostgreSQL listens on 127.0.0.1:5432 and its UNIX socket (as on CI)."""

from __future__ import annotations

import os
import time

import pytest

from slmtune.graders import sandbox
from slmtune.graders.grade import check_grader, grade_batch, sample_of
from slmtune.graders.spec import parse_grader

pytestmark = pytest.mark.skipif(sandbox.unavailable() is not None, reason=str(sandbox.unavailable()))
QUICK = sandbox.Limits(memory_mb=512, cpu_s=3, wall_s=8)


def run_one(body: str, limits=QUICK):
    source = "import os, socket, subprocess, signal\n\ndef grade(sample, item):\n" + \
        "".join(f"    {line}\n" for line in body.strip().splitlines())
    outcomes, fatal = sandbox.run(source, [{"sample": {"output_text": "4"}, "item": {"answer": "4"}}], limits)
    return outcomes[0]


def test_an_honest_grader_scores():
    assert run_one("return float(sample['output_text'] == item['answer'])").score == 1.0


@pytest.mark.parametrize("body", [
    "socket.create_connection(('127.0.0.1', 5432), timeout=2)\nreturn 1",
    "s = socket.socket(socket.AF_UNIX)\ns.connect('/var/run/postgresql/.s.PGSQL.5432')\nreturn 1",
    "socket.getaddrinfo('pypi.org', 443)\nreturn 1",
])
def test_no_network_and_no_local_sockets(body):
    out = run_one(body)
    assert out.score is None and ("PermissionError" in out.error or "gaierror" in out.error)


def test_the_servers_files_and_environment_are_out_of_reach(tmp_path, monkeypatch):
    db = tmp_path / "slmtune.db"
    db.write_text("api keys live here")
    monkeypatch.setenv("SLMTUNE_DB_URL", f"sqlite:///{db}")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    read = run_one(f"return len(open({str(db)!r}).read())")
    assert read.score is None and "Permission denied" in read.error
    for path in ("/etc/passwd", "/proc/self/environ", f"/proc/{os.getpid()}/environ", os.path.expanduser("~")):
        out = run_one(f"return len(os.listdir({path!r}) if os.path.isdir({path!r}) else open({path!r}).read())")
        assert out.score is None and "Permission denied" in out.error, path
    env = run_one("return float(len(os.environ) + 100 * any('SLMTUNE' in k or 'KEY' in k for k in os.environ))")
    assert env.score is not None and env.score < 100
    cwd = run_one("open('out.txt', 'w').write('x')\nreturn 1")
    assert cwd.score is None and "Permission denied" in cwd.error


def test_no_new_processes_and_no_signals_to_others():
    bomb = run_one("while True:\n    os.fork()")
    assert bomb.score is None and "Operation not permitted" in bomb.error
    sub = run_one("subprocess.run(['sh', '-c', 'echo hi'])\nreturn 1")
    assert sub.score is None and "Operation not permitted" in sub.error
    kill = run_one(f"os.kill({os.getpid()}, signal.SIGKILL)\nreturn 1")
    assert kill.score is None and "Operation not permitted" in kill.error


def test_memory_and_time_are_capped_and_the_caller_goes_on():
    big = run_one("x = bytearray(10 * 2**30)\nreturn 1")
    assert big.score is None and "MemoryError" in big.error
    t0 = time.monotonic()
    loop = run_one("while True:\n    pass", sandbox.Limits(memory_mb=512, cpu_s=2, wall_s=30))
    assert loop.score is None and "CPU-time limit" in loop.error and time.monotonic() - t0 < 30
    sleep = run_one("import time\ntime.sleep(60)", sandbox.Limits(memory_mb=512, cpu_s=5, wall_s=2))
    assert sleep.score is None and "wall-clock limit" in sleep.error


def test_an_exception_scores_zero_in_a_batch_and_the_rest_still_score():
    g = parse_grader({"type": "python", "name": "p", "source":
                      "def grade(sample, item):\n    return 1 / int(sample['output_text'])\n"})
    grades = grade_batch(g, [sample_of("2"), sample_of("0"), sample_of("4")], [{}] * 3)
    assert [x.reward for x in grades] == [0.5, 0.0, 0.25]
    assert "ZeroDivisionError" in grades[1].errors["python_grader_runtime_error"] and not grades[0].errors


def test_a_broken_source_is_refused_with_its_error():
    bad = parse_grader({"type": "python", "name": "p", "source": "def grade(sample, item) return 1"})
    assert "SyntaxError" in check_grader(bad)[0]
    none = parse_grader({"type": "python", "name": "p", "source": "x = 1"})
    assert "defines no function grade" in check_grader(none)[0]
