"""Models by name from the Hugging Face hub (wasillama.hub), offline: against a hub cache laid out
as huggingface_hub lays it out, and against a hub on localhost (tests/local_hub.py) that the real
huggingface_hub client downloads from. Loads run on every backend and are held to loading the
same file by path."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from helpers import greedy_and_logits, load_model
from local_hub import LocalHub, write_cache
from synthetic import copy_gguf
from wasillama import ModelNotFoundError
from wasillama.cli import main
from wasillama.hub import CorruptDownloadError, HubError, HubRef, choose, fetch, quant_of

PROMPT = "The quick brown fox"


@pytest.fixture(scope="module")
def files(synthetic_models: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two quants of one synthetic model, and the first as a split GGUF in three parts."""
    q8 = synthetic_models(qtype="q8_0", n_layer=2, n_embd=128, n_ff=256)
    q4 = synthetic_models(qtype="q4_0", n_layer=2, n_embd=128, n_ff=256)
    first = copy_gguf(q8, tmp_path_factory.mktemp("split") / "tiny-Q8_0.gguf", split_max_tensors=8)
    return {"q8": q8, "q4": q4, "split": first}


@pytest.fixture
def hub_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty hub cache and wasillama cache of this test's own; no hub reachable."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("WASILLAMA_CACHE", str(tmp_path / "wasillama"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing answers
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return tmp_path / "hub"


@pytest.fixture
def hub(files: dict[str, Path], hub_env: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalHub]:
    split = sorted(files["split"].parent.glob("tiny-Q8_0-*.gguf"))
    local = LocalHub({
        "test/tiny": {"tiny-Q8_0.gguf": files["q8"].read_bytes(), "tiny-Q4_0.gguf": files["q4"].read_bytes(),
                      "README.md": b"# tiny\n"},
        "test/split": {f"parts/{p.name}": p.read_bytes() for p in split},
    })
    monkeypatch.setenv("HF_ENDPOINT", local.url)
    yield local
    local.close()


def greedy(source: object, backend_name: str) -> tuple[str, np.ndarray]:
    return greedy_and_logits(source, backend_name, PROMPT, max_tokens=8)


# ---- references and the choice of a file ---------------------------------------------------------

def test_references_parse() -> None:
    assert HubRef.parse("bartowski/Qwen2.5-0.5B-Instruct-GGUF") == HubRef("bartowski/Qwen2.5-0.5B-Instruct-GGUF")
    assert HubRef.parse("owner/repo:q8_0") == HubRef("owner/repo", quant="Q8_0")
    assert HubRef.parse("owner/repo/sub/m.gguf") == HubRef("owner/repo", file="sub/m.gguf")
    assert HubRef.parse("owner/repo:m.gguf") == HubRef("owner/repo", file="m.gguf")
    assert HubRef.parse("owner/repo@v1.0:Q4_K_M") == HubRef("owner/repo", revision="v1.0", quant="Q4_K_M")
    for bad in ("repo-without-owner", "owner/repo:not-a-quant", "a/b/c d"):
        with pytest.raises(HubError):
            HubRef.parse(bad)


def test_the_preferred_quant_is_chosen_and_splits_and_projectors_are_told_apart() -> None:
    names = ["README.md", "m-Q8_0.gguf", "m-Q4_K_M.gguf", "m-Q4_K_S.gguf", "mmproj-m-f16.gguf", "m-IQ4_XS.gguf",
             "big/m-Q6_K-00001-of-00002.gguf", "big/m-Q6_K-00002-of-00002.gguf", "half/m-F16-00001-of-00002.gguf"]
    assert quant_of("m-Q4_K_M.gguf") == "Q4_K_M" and quant_of("Llama-3.2-1B.IQ4_XS.gguf") == "IQ4_XS"
    assert choose(HubRef("o/r"), names).files == ("m-Q4_K_M.gguf",)
    assert choose(HubRef("o/r", quant="Q6_K"), names).files == ("big/m-Q6_K-00001-of-00002.gguf",
                                                                 "big/m-Q6_K-00002-of-00002.gguf")
    assert choose(HubRef("o/r", quant="IQ4_XS"), names).files == ("m-IQ4_XS.gguf",)
    with pytest.raises(HubError, match="no F16 GGUF"):  # one part of two is not a model
        choose(HubRef("o/r", quant="F16"), names)
    with pytest.raises(HubError, match=r"m-Q8_0\.gguf"):  # the message lists what there is
        choose(HubRef("o/r", quant="Q2_K"), names)


# ---- a hub on localhost ---------------------------------------------------------------------------

def test_pull_by_repo_picks_a_quant_and_loads_like_the_file(hub: LocalHub, files: dict[str, Path],
                                                            backend_name: str) -> None:
    path = fetch("test/tiny", refresh=True, quiet=True)
    assert path.name == "tiny-Q4_0.gguf"  # Q4_0 comes before Q8_0 in the preference (no Q4_K_M here)
    assert path.read_bytes() == files["q4"].read_bytes()
    assert "snapshots" in path.parts and path.is_symlink()  # the hub's own cache layout
    assert greedy("hf://test/tiny:Q8_0", backend_name)[0] == greedy(files["q8"], backend_name)[0]
    assert hub.downloads == {"test/tiny/tiny-Q4_0.gguf": 1, "test/tiny/tiny-Q8_0.gguf": 1}


def test_a_cached_model_is_not_downloaded_again(hub: LocalHub) -> None:
    first = fetch("test/tiny:Q8_0", refresh=True, quiet=True)
    assert fetch("test/tiny:Q8_0", refresh=True, quiet=True) == first  # asks the hub, downloads nothing
    hub.close()  # the hub goes away: a cached reference still resolves, without asking
    assert fetch("test/tiny:Q8_0", quiet=True) == first
    assert fetch("test/tiny:Q8_0", refresh=True, quiet=True) == first  # cannot reach it: the cache answers
    assert hub.downloads == {"test/tiny/tiny-Q8_0.gguf": 1}
    with pytest.raises(HubError, match="cannot reach the hub"):
        fetch("test/tiny:Q4_0", quiet=True)


def test_a_split_gguf_is_fetched_whole_and_loads_as_one(hub: LocalHub, files: dict[str, Path],
                                                        backend_name: str) -> None:
    path = fetch("test/split", refresh=True, quiet=True)
    assert path.name == "tiny-Q8_0-00001-of-00003.gguf"
    assert sorted(p.name for p in path.parent.iterdir()) == [f"tiny-Q8_0-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    text, logits = greedy("hf://test/split", backend_name)
    ref_text, ref_logits = greedy(files["q8"], backend_name)
    assert text == ref_text
    np.testing.assert_array_equal(logits, ref_logits)


def test_a_corrupt_download_is_fetched_again(hub: LocalHub, files: dict[str, Path]) -> None:
    hub.corrupt["test/tiny/tiny-Q8_0.gguf"] = 1
    path = fetch("test/tiny:Q8_0", refresh=True, quiet=True)
    assert path.read_bytes() == files["q8"].read_bytes()
    assert hub.downloads["test/tiny/tiny-Q8_0.gguf"] == 2
    hub.corrupt["test/tiny/tiny-Q4_0.gguf"] = 2  # corrupt every time: refused, and nothing left cached
    with pytest.raises(CorruptDownloadError, match="does not match the hub's digest"):
        fetch("test/tiny:Q4_0", refresh=True, quiet=True)
    assert not list(Path(os.environ["HF_HUB_CACHE"]).rglob("tiny-Q4_0.gguf"))


def test_a_cached_file_corrupted_later_is_refused_offline_and_fetched_again_online(
        hub: LocalHub, files: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    path = fetch("test/tiny:Q8_0", refresh=True, quiet=True)
    blob = path.resolve()
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x55  # a flipped bit in the weights: llama.cpp would load it
    blob.write_bytes(bytes(data))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CorruptDownloadError, match=r"wasillama pull test/tiny:tiny-Q8_0.gguf"):
        load_model("hf://test/tiny:Q8_0")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert fetch("test/tiny:Q8_0", refresh=True, quiet=True) == path
    assert path.read_bytes() == files["q8"].read_bytes()
    assert hub.downloads["test/tiny/tiny-Q8_0.gguf"] == 2


# ---- offline mode, over a cache laid out by hand ---------------------------------------------------

def test_offline_mode_uses_the_cache_and_never_the_network(hub_env: Path, files: dict[str, Path],
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           backend_name: str) -> None:
    write_cache(hub_env, "test/cached", {"tiny-Q8_0.gguf": files["q8"].read_bytes(), "README.md": b"x"})
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert greedy("hf://test/cached", backend_name)[0] == greedy(files["q8"], backend_name)[0]
    with pytest.raises(ModelNotFoundError, match="HF_HUB_OFFLINE"):
        fetch("test/cached:Q4_0", refresh=True)
    with pytest.raises(ModelNotFoundError, match="HF_HUB_OFFLINE"):
        fetch("test/elsewhere")


# ---- the CLI: pull, models, rm, run -m hf:// --------------------------------------------------------

def test_cli_pull_models_rm(hub: LocalHub, files: dict[str, Path]) -> None:
    cli = CliRunner()
    pulled = cli.invoke(main, ["pull", "hf://test/tiny:Q8_0", "--quiet"])
    assert pulled.exit_code == 0, pulled.output
    assert Path(pulled.output.strip()).read_bytes() == files["q8"].read_bytes()
    assert cli.invoke(main, ["pull", "test/split", "-q"]).exit_code == 0
    listed = cli.invoke(main, ["models", "--json"])
    rows = {r["model"]: r for r in map(json.loads, listed.output.splitlines()) if r["repo"]}
    assert set(rows) == {"test/tiny:tiny-Q8_0.gguf", "test/split:parts/tiny-Q8_0-00001-of-00003.gguf"}
    tiny = rows["test/tiny:tiny-Q8_0.gguf"]
    assert (tiny["architecture"], tiny["quant"], tiny["size"], tiny["parts"]) == (
        "llama", "Q8_0", files["q8"].stat().st_size, 1)
    assert rows["test/split:parts/tiny-Q8_0-00001-of-00003.gguf"]["parts"] == 3
    table = cli.invoke(main, ["models"]).output
    assert "test/tiny:tiny-Q8_0.gguf" in table and "Q8_0" in table and "(3 parts)" in table
    run = cli.invoke(main, ["run", "-m", "hf://test/tiny:Q8_0", "--raw", "-p", PROMPT, "-n", "8", "--temp", "0", "-q"])
    assert run.exit_code == 0, run.output
    assert run.output.strip() == greedy(files["q8"], "wasm")[0].strip()
    removed = cli.invoke(main, ["rm", "test/tiny:Q8_0"])
    assert removed.exit_code == 0 and "tiny-Q8_0.gguf" in removed.output
    assert not Path(pulled.output.strip()).exists()
    assert cli.invoke(main, ["rm", "test/split"]).exit_code == 0
    assert not [r for r in map(json.loads, cli.invoke(main, ["models", "--json"]).output.splitlines()) if r["repo"]]
    gone = cli.invoke(main, ["rm", "test/split"])
    assert gone.exit_code == 1 and "not in the hub cache" in gone.output


def test_serve_fetches_hub_models_at_start(hub: LocalHub, files: dict[str, Path]) -> None:
    from wasillama.server import load_config

    config = load_config(models=["hf://test/tiny:Q8_0"])
    (model,) = config.models
    assert model.name == "tiny-Q8_0"  # served under its file's name
    assert Path(model.path).read_bytes() == files["q8"].read_bytes()
