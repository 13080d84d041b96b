"""Through every public entry point — a model path, LoRA, state files, chat templates, grammars and
JSON schemas — the guest neither opens a host file, nor reads the environment, nor reaches the
network, even when the inputs ask it to (a template that includes a file, a schema that refers to
one, a model whose metadata names one).

Two witnesses: every WASI call the guest makes is recorded (the only door it has: the import list
is pinned by test_capabilities.py, and has no socket call), and a Python audit hook records every
file this process opens and every socket it touches while the calls run. The files opened must be
exactly those the caller named; the secret file's and the secret variable's contents must appear
in no output."""

from __future__ import annotations

import secrets
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import synthetic
import wasillama
from wasillama import WasillamaError
from wasillama.wasm import wasi

SECRET_ENV = "WASILLAMA_TEST_SECRET"

_audit: list[tuple[str, tuple[Any, ...]]] | None = None


def _hook(event: str, args: tuple[Any, ...]) -> None:
    if _audit is not None and (event == "open" or event.startswith(("socket.", "os.exec", "subprocess."))):
        _audit.append((event, args))


sys.addaudithook(_hook)  # cannot be removed: it records only inside `watched()`


@pytest.fixture
def secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, str]]:
    value = "s3cr3t-" + secrets.token_hex(16)
    path = tmp_path / "secret.txt"
    path.write_text(value)
    monkeypatch.setenv(SECRET_ENV, value)
    yield path, value


@pytest.fixture
def guest_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, tuple[int, ...], Any]]:
    """Every WASI call of sandboxes made from here on: (name, arguments, result)."""
    calls: list[tuple[str, tuple[int, ...], Any]] = []
    for name in wasi.IMPORTS:
        original = getattr(wasi.Wasi, name)

        def spy(self: wasi.Wasi, *args: int, _name: str = name, _fn: Callable[..., Any] = original) -> Any:
            result = _fn(self, *args)
            # for the environment: how many variables the guest was told there are
            seen = (result, self._mem.u32(args[0])) if _name == "environ_sizes_get" else result
            calls.append((_name, args, seen))
            return result

        monkeypatch.setattr(wasi.Wasi, name, spy)
    return calls


class Watched:
    def __init__(self) -> None:
        self.events: list[tuple[str, tuple[Any, ...]]] = []

    def opened(self) -> set[str]:
        """Files opened, less the import system's (sys.path entries, package metadata the host
        reads to find backend plugins)."""
        paths = {str(args[0]) for event, args in self.events if event == "open" and isinstance(args[0], (str, Path))}
        return {p for p in paths if ".dist-info" not in Path(p).parent.name and p not in sys.path}

    def network(self) -> list[tuple[str, tuple[Any, ...]]]:
        return [e for e in self.events if e[0].startswith(("socket.", "os.exec", "subprocess."))]


class watched:
    def __enter__(self) -> Watched:
        global _audit
        self.w = Watched()
        _audit = self.w.events
        return self.w

    def __exit__(self, *exc: object) -> None:
        global _audit
        _audit = None


def hostile_model(tmp_path: Path, secret_path: Path) -> Path:
    """A real model whose metadata names the secret file and the variable, and whose own chat
    template tries to include the file and print the environment."""
    vocab = synthetic.pinned_llama_cpp_dir() / "models" / synthetic.DEFAULT_VOCAB
    src = synthetic.write_llama(tmp_path / "base.gguf", vocab=vocab, seed=2, n_layer=2, n_embd=64, qtype="q8_0")
    template = (f"{{% include '{secret_path}' %}}{{{{ env }}}}{{{{ environ['{SECRET_ENV}'] }}}}"
                "{% for m in messages %}{{ m['content'] }}{% endfor %}")
    return synthetic.copy_gguf(src, tmp_path / "hostile.gguf", strings={
        "general.name": str(secret_path), "general.source.url": f"file://{secret_path}",
        "tokenizer.chat_template": template})


def test_no_entry_point_reaches_a_file_the_environment_or_the_network(
        tmp_path: Path, secret: tuple[Path, str], guest_calls: list[tuple[str, tuple[int, ...], Any]]) -> None:
    secret_path, value = secret
    assert not any(name.startswith("sock_") for name in wasi.IMPORTS)
    model_path = hostile_model(tmp_path, secret_path)
    lora_path = synthetic.write_lora(tmp_path / "lora.gguf", n_embd=64, n_ff=256, seed=3)
    state_path = tmp_path / "state.bin"
    outputs: list[str] = []
    hi = [{"role": "user", "content": "hi"}]

    def attempt(fn: Callable[[], object]) -> None:
        try:
            outputs.append(repr(fn()))
        except WasillamaError as e:
            outputs.append(str(e))

    with wasillama.Model.load(model_path) as warm:  # the host's own imports and its module cache, first
        warm.apply_chat_template(hi, template="{{ 1 }}")
    with watched() as w, wasillama.Model.load(model_path) as model, model.load_lora(lora_path) as lora, \
                model.new_context(n_ctx=256) as ctx:
        outputs.append(repr(model.metadata))
        attempt(lambda: model.apply_chat_template(hi))  # the model's own template
        for template in (f"{{% include '{secret_path}' %}}", f"{{% import '{secret_path}' as s %}}{{{{ s }}}}",
                         f"{{% extends '{secret_path}' %}}", "{{ env }}{{ environ }}{{ os }}{{ self }}",
                         "{{ range.__globals__ }}{{ cycler.__init__.__globals__ }}"):
            attempt(lambda t=template: model.apply_chat_template(hi, template=t))  # type: ignore[misc]
        for grammar in (f'root ::= "{secret_path}"', f"root ::= [{secret_path}]", f"@include {secret_path}"):
            attempt(lambda g=grammar: ctx.generate("x", max_tokens=4, grammar=g).text)  # type: ignore[misc]
        for schema in ({"$ref": f"file://{secret_path}"}, {"$ref": str(secret_path)},
                       {"$schema": f"file://{secret_path}", "type": "string"}):
            attempt(lambda s=schema: ctx.generate("x", max_tokens=4, json_schema=s).text)  # type: ignore[misc]
        ctx.set_loras({lora: 1.0})
        outputs.append(ctx.generate(str(secret_path), max_tokens=4, temperature=0).text)
        ctx.save_state_file(state_path)
        ctx.load_state_file(state_path)
    allowed = {str(model_path), str(lora_path), str(state_path), str(state_path) + ".tmp"}
    assert {str(model_path), str(lora_path)} <= w.opened()  # the witness sees the host's own reads
    assert w.opened() <= allowed, f"files opened beyond those named: {w.opened() - allowed}"
    assert str(secret_path) not in w.opened()
    assert w.network() == []
    assert all(value not in out for out in outputs)
    names = {name for name, _, _ in guest_calls}
    assert names, "the spy saw no guest call"
    # sched_yield: a guest thread waiting at a barrier (whether one waits long enough depends on timing)
    assert names <= {"clock_time_get", "random_get", "fd_write", "environ_sizes_get", "environ_get", "fd_fdstat_get",
                     "fd_prestat_get", "fd_close", "fd_seek", "proc_exit", "sched_yield"}, names
    for name, args, rc in guest_calls:
        if name == "fd_write":
            assert args[0] in (1, 2)  # stdout and stderr only: they are log lines
        if name in ("path_open", "fd_read", "fd_prestat_get"):
            assert rc != wasi.SUCCESS, f"{name}{args} succeeded"
        if name == "environ_sizes_get":
            assert rc == (wasi.SUCCESS, 0)  # no variables
