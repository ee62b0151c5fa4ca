"""llama.cpp's `llama-server` as a benchmark anchor, built here from the `llama-cpp-python` sdist on PyPI.

    .venv/bin/python benchmarks/llama_server.py [--version 0.3.36]     # builds (or finds) it and prints its path

Never a downloaded binary: `pip download --no-binary :all:` fetches the sdist (its vendored llama.cpp source), cmake
builds the `llama-server` target for this CPU (`GGML_NATIVE`, so AVX512/AMX paths are compiled where the machine
has them), and the result is cached under `~/.cache/slmtune-bench/llama.cpp-<version>-<cpu>/`: the first call takes
minutes on 2 cores, later ones return at once. The cache key includes the CPU's model name because a native build
from an AMX machine may not run on an AVX2-only one.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

VERSION = "0.3.36"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "slmtune-bench"


def cpu_key() -> str:
    """A short key for this CPU: its model name and SIMD flags, hashed."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), "")
    flags = next((ln.split(":", 1)[1] for ln in text.splitlines() if ln.startswith("flags")), "")
    simd = " ".join(sorted(f for f in flags.split() if f.startswith(("avx", "amx", "fma", "f16c"))))
    return hashlib.sha256(f"{model}|{simd}".encode()).hexdigest()[:10]


def llama_server(version: str = VERSION, jobs: int | None = None) -> Path:
    """The path of a `llama-server` built from llama-cpp-python ``version``'s sdist (built on first use)."""
    home = CACHE / f"llama.cpp-{version}-{cpu_key()}"
    binary = home / "bin" / "llama-server"
    if binary.exists():
        return binary
    work = Path(tempfile.mkdtemp(prefix="llama-cpp-build-"))
    try:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                        "-d", str(work), f"llama-cpp-python=={version}"], check=True)
        sdist = next(work.glob("llama_cpp_python-*.tar.gz"))
        with tarfile.open(sdist) as tar:
            tar.extractall(work, filter="data")
        src = next(work.glob("llama_cpp_python-*/vendor/llama.cpp"))
        build = work / "build"
        print(f"building llama-server {version} from {sdist.name} (several minutes on 2 cores)...", flush=True)
        log = work / "build.log"
        with log.open("w") as out:
            try:
                subprocess.run(["cmake", "-S", str(src), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
                                "-DGGML_NATIVE=ON", "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF",
                                "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=ON", "-DBUILD_SHARED_LIBS=OFF"],
                               check=True, stdout=out, stderr=subprocess.STDOUT)
                subprocess.run(["cmake", "--build", str(build), "--target", "llama-server", "-j",
                                str(jobs or os.cpu_count())], check=True, stdout=out, stderr=subprocess.STDOUT)
            except subprocess.CalledProcessError:
                sys.stderr.write(log.read_text()[-4000:])
                raise
        (home / "bin").mkdir(parents=True, exist_ok=True)
        shutil.copy2(build / "bin" / "llama-server", binary)
        return binary
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--version", default=VERSION)
    print(llama_server(ap.parse_args().version))


if __name__ == "__main__":
    main()
