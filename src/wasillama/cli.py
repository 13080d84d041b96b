"""The `wasillama` command: run, chat, bench, info."""

from __future__ import annotations

import logging
import os
import platform
import sys
from collections.abc import Callable
from typing import Any, get_args

import click

from . import __version__
from .backend import Backend, installed_plugins
from .errors import WasillamaError
from .model import Model
from .options import MAX_TOKENS, ContextOptions, Numerics, Sampling
from .progress import wanted as show_progress


def _load(model_path: str | None, backend: str, gpu_layers: int, trust_model: bool, quiet: bool = False) -> Model:
    if model_path is None:
        from .default_model import default_model_path

        model_path = str(default_model_path(quiet=quiet))
    return Model.load(model_path, backend=backend, gpu_layers=gpu_layers, trust_model=trust_model,  # type: ignore[arg-type]
                      progress=show_progress(quiet))


def model_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Options every command that loads a model shares."""
    opts = [
        click.option("-m", "--model", "model_path", type=click.Path(dir_okay=False),
                     help="GGUF file, or hf://owner/repo[:QUANT] from the Hugging Face hub (default: "
                          "SmolLM2-135M-Instruct, fetched once into the cache)."),
        click.option("--backend", type=click.Choice(["wasm", "native", "auto"]), default="wasm", show_default=True,
                     help="wasm is sandboxed; native (plugin) trusts the model file and can use a GPU."),
        click.option("--gpu-layers", "-ngl", type=int, default=0, show_default=True,
                     help="Layers to offload to the GPU (native backend; -1 = all)."),
        click.option("--trust-model", is_flag=True, help="Allow the unsandboxed native backend to read this file."),
        click.option("-v", "--verbose", is_flag=True, help="Show llama.cpp's log."),
        quiet_option,
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


quiet_option = click.option("-q", "--quiet", "--silent", "quiet", is_flag=True,
                            help="No progress bars (they are drawn only on a terminal anyway).")


# CLI flags for the Sampling fields (llama.cpp's names where it has one); defaults and types come
# from the dataclass, so they cannot drift from the library's.
_SAMPLING_FLAGS: dict[str, tuple[tuple[str, ...], str]] = {
    "temperature": (("--temp",), "Sampling temperature; 0 = greedy."),
    "top_k": (("--top-k",), "Keep the k likeliest tokens (0 = off)."),
    "top_p": (("--top-p",), "Nucleus sampling (1 = off)."),
    "min_p": (("--min-p",), "Drop tokens below this share of the likeliest (0 = off)."),
    "typical_p": (("--typical",), "Locally typical sampling (1 = off)."),
    "repeat_penalty": (("--repeat-penalty",), "Penalise repeated tokens (1 = off)."),
    "repeat_last_n": (("--repeat-last-n",), "Tokens the penalties look back over."),
    "frequency_penalty": (("--frequency-penalty",), "Penalty per earlier occurrence."),
    "presence_penalty": (("--presence-penalty",), "Penalty for any earlier occurrence."),
    "dry_multiplier": (("--dry-multiplier",), "DRY repetition penalty (0 = off)."),
    "dry_base": (("--dry-base",), "DRY base."),
    "dry_allowed_length": (("--dry-allowed-length",), "Repetitions DRY allows."),
    "dry_last_n": (("--dry-penalty-last-n",), "Tokens DRY scans."),
    "xtc_probability": (("--xtc-probability",), "XTC: chance to exclude the top choices (0 = off)."),
    "xtc_threshold": (("--xtc-threshold",), "XTC threshold."),
    "mirostat": (("--mirostat",), "Mirostat: 0 = off, 1 = v1, 2 = v2."),
    "mirostat_tau": (("--mirostat-ent",), "Mirostat target entropy."),
    "mirostat_eta": (("--mirostat-lr",), "Mirostat learning rate."),
    "seed": (("-s", "--seed"), "RNG seed (default: random)."),
    "grammar": (("--grammar",), "GBNF grammar the output must follow."),
    "json_schema": (("--json-schema",), "JSON schema (JSON text) the output must follow."),
    "ignore_eos": (("--ignore-eos",), "Keep generating past end-of-generation tokens."),
}
_SAMPLING_DEFAULTS = Sampling()


def sampling_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Generation options: max tokens, context size, and every Sampling field (see _sampling)."""
    opts = [
        click.option("-n", "--n-predict", "max_tokens", type=int, default=MAX_TOKENS, show_default=True,
                     help="Most tokens to generate."),
        click.option("-c", "--ctx-size", "n_ctx", type=int, default=ContextOptions().n_ctx, show_default=True),
        click.option("--grammar-file", type=click.File("r"), default=None, help="Read the GBNF grammar from a file."),
    ]
    for name, (flags, help_text) in _SAMPLING_FLAGS.items():
        default = getattr(_SAMPLING_DEFAULTS, name)
        if isinstance(default, bool):
            opts.append(click.option(*flags, name, is_flag=True, default=default, help=help_text))
        else:
            kind = {"seed": int, "grammar": str, "json_schema": str}.get(name, type(default))  # None by default
            opts.append(click.option(*flags, name, type=kind, default=default, show_default=default is not None,
                                     help=help_text))
    for opt in reversed(opts):
        f = opt(f)
    return f


def _sampling(options: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments generate() takes, from sampling_options' values."""
    grammar_file = options.pop("grammar_file", None)
    if grammar_file is not None:
        if options.get("grammar") is not None:
            raise click.UsageError("give --grammar or --grammar-file, not both")
        options["grammar"] = grammar_file.read()
    max_tokens = options.pop("max_tokens")
    return {"sampling": Sampling(**options), "max_tokens": max_tokens}


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(name)s: %(message)s")
    if not verbose:
        logging.getLogger("wasillama.llama").setLevel(logging.ERROR)


class _Cli(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except WasillamaError as e:  # user-facing failures: one line, no traceback
            click.echo(f"error: {e}", err=True)
            sys.exit(1)


@click.group(cls=_Cli)
@click.version_option(__version__, prog_name="wasillama")
def main() -> None:
    """llama.cpp in a WebAssembly sandbox."""


# A plain system message unless told otherwise: a template's own default can be a poor fit (the
# default model's names itself and then, at 135M parameters, often answers in French).
DEFAULT_SYSTEM = "You are a helpful assistant."


@main.command()
@click.option("-p", "--prompt", required=True, help="The prompt.")
@click.option("--raw", is_flag=True, help="Complete the prompt as plain text instead of as a chat message.")
@click.option("--system", default=DEFAULT_SYSTEM, show_default=True,
              help="System message (chat mode); '' leaves it to the chat template.")
@click.option("--timings", is_flag=True, help="Print prompt and generation speed to stderr.")
@model_options
@sampling_options
def run(prompt: str, raw: bool, system: str | None, timings: bool, model_path: str | None, backend: str,
        gpu_layers: int, trust_model: bool, verbose: bool, quiet: bool, n_ctx: int, **sampling: Any) -> None:
    """Generate a reply to PROMPT (as a chat turn when the model has a chat template)."""
    _setup_logging(verbose)
    with _load(model_path, backend, gpu_layers, trust_model, quiet) as model, model.new_context(n_ctx=n_ctx) as ctx:
        if raw or model.chat_template is None:
            stream = ctx.stream(prompt, **_sampling(sampling))
        else:
            messages = [{"role": "system", "content": system}] if system else []
            messages.append({"role": "user", "content": prompt})
            stream = ctx.chat_stream(messages, **_sampling(sampling))
        for piece in stream:
            click.echo(piece, nl=False)
        click.echo()
        if timings and stream.result is not None:
            t = stream.result.timings
            click.echo(f"prompt: {t.prompt_tokens} tokens, {t.prompt_tokens_per_second:.1f} t/s; "
                       f"generation: {t.generated_tokens} tokens, {t.generation_tokens_per_second:.1f} t/s", err=True)


@main.command()
@click.option("--system", default=DEFAULT_SYSTEM, show_default=True,
              help="System message; '' leaves it to the chat template.")
@model_options
@sampling_options
def chat(system: str | None, model_path: str | None, backend: str, gpu_layers: int, trust_model: bool,
         verbose: bool, quiet: bool, n_ctx: int, **sampling: Any) -> None:
    """Interactive multi-turn chat (Ctrl-D or /exit to quit, /reset to start over)."""
    _setup_logging(verbose)
    options = _sampling(sampling)
    with _load(model_path, backend, gpu_layers, trust_model, quiet) as model, model.new_context(n_ctx=n_ctx) as ctx:
        first = [{"role": "system", "content": system}] if system else []
        messages = list(first)
        interactive = sys.stdin.isatty()
        while True:
            try:
                line = input("> ") if interactive else sys.stdin.readline()
            except (EOFError, KeyboardInterrupt):
                break
            if not interactive and line == "":
                break
            line = line.strip()
            if line in ("/exit", "/quit"):
                break
            if line == "/reset":
                messages = list(first)
                continue
            if not line:
                continue
            messages.append({"role": "user", "content": line})
            stream = ctx.chat_stream(messages, **options)
            for piece in stream:
                click.echo(piece, nl=False)
            click.echo()
            assert stream.result is not None
            messages.append({"role": "assistant", "content": stream.result.text})


@main.command(context_settings={"allow_extra_args": True})
@click.option("-p", "--n-prompt", type=int, default=512, show_default=True, help="Prompt tokens (pp test).")
@click.option("-n", "--n-gen", type=int, default=128, show_default=True, help="Generated tokens (tg test).")
@click.option("-r", "--repetitions", type=int, default=3, show_default=True)
@click.option("-b", "--batch-size", type=int, default=512, show_default=True)
@click.option("-t", "--threads", type=int, default=0, help="Threads, both backends (0: one per core).")
@click.option("--numerics", type=click.Choice(get_args(Numerics)), default=ContextOptions().numerics, show_default=True,
              help="x86: round as native llama.cpp's x86 builds do (wasm: slower on Q8_0/Q4_0/Q4_1/Q4_K).")
@click.option("--llama-bench", "llama_bench", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Also run this native llama-bench binary on the same model and print ratios.")
@click.option("--llama-bench-threads", type=int, default=1, show_default=True,
              help="Threads for llama-bench (match -t to compare at equal threads).")
@click.option("--side-by-side", is_flag=True,
              help="Run benchmarks/side_by_side.py (source checkout): every backend, both native llama.cpp builds, "
                   "the benchmark models; writes docs/benchmarks.*. -p/-n/-r/-t/-m given here and arguments "
                   "after `--` are passed on.")
@model_options
@click.pass_context
def bench(ctx: click.Context, n_prompt: int, n_gen: int, repetitions: int, batch_size: int, threads: int,
          numerics: Numerics, llama_bench: str | None, llama_bench_threads: int, side_by_side: bool,
          model_path: str | None, backend: str,
          gpu_layers: int, trust_model: bool, verbose: bool, quiet: bool) -> None:
    """Prompt processing (pp) and generation (tg) speed, as llama-bench measures them."""
    from .bench import run_bench, run_llama_bench
    from .default_model import default_model_path

    if side_by_side:
        _side_by_side(ctx)
    if ctx.args:
        raise click.UsageError(f"unexpected arguments {' '.join(ctx.args)} (they go with --side-by-side)")
    _setup_logging(verbose)
    path = model_path or str(default_model_path(quiet=quiet))
    if path.startswith("hf://"):  # llama-bench takes a local path
        from .hub import fetch

        path = str(fetch(path[len("hf://"):], quiet=quiet))
    with _load(path, backend, gpu_layers, trust_model, quiet) as model:
        ours = run_bench(model, n_prompt=n_prompt, n_gen=n_gen, repetitions=repetitions, n_batch=batch_size,
                         n_threads=threads, numerics=numerics)
        desc = f"{model.description} ({model.size_bytes / 2**20:.0f} MiB)"
    theirs = {}
    if llama_bench:
        theirs = {r.test: r for r in run_llama_bench(llama_bench, path, n_prompt=n_prompt, n_gen=n_gen,
                                                     repetitions=repetitions, threads=llama_bench_threads,
                                                     gpu_layers=gpu_layers)}
    click.echo(f"model: {desc}  backend: {backend}  machine: {platform.machine()}, {os.cpu_count()} CPUs")
    header = f"| {'test':>8} | {'wasillama t/s':>16} |"
    if theirs:
        header += f" {'llama-bench t/s':>16} | {'ratio':>6} |"
    click.echo(header)
    click.echo("|" + "|".join("-" * (len(c) + 0) for c in header.split("|")[1:-1]) + "|")
    for r in ours:
        row = f"| {r.test:>8} | {r.mean:>9.2f} ± {r.stdev:>4.2f} |"
        if r.test in theirs:
            t = theirs[r.test]
            row += f" {t.mean:>9.2f} ± {t.stdev:>4.2f} | {r.mean / t.mean:>6.3f} |"
        click.echo(row)


def _side_by_side(ctx: click.Context) -> None:
    """Hand over to the harness, which lives beside the package in a checkout (it builds llama.cpp)."""
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "side_by_side.py"
    if not script.is_file():
        raise click.UsageError("--side-by-side needs a source checkout of wasillama (benchmarks/side_by_side.py)")
    args = []
    for name, flag in (("n_prompt", "-p"), ("n_gen", "-n"), ("repetitions", "-r"), ("threads", "--threads"),
                       ("model_path", "--models")):
        if ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE:
            args += [flag, str(ctx.params[name])]
    sys.exit(subprocess.call([sys.executable, str(script), *args, *ctx.args]))


@main.command()
@click.argument("reference")
@quiet_option
def pull(reference: str, quiet: bool) -> None:
    """Fetch a GGUF from the Hugging Face hub into its cache: REFERENCE is owner/repo (the
    preferred quant, Q4_K_M first), owner/repo:QUANT or owner/repo:FILE.gguf (hf:// optional).
    Prints the local path."""
    from .hub import fetch

    path = fetch(reference.removeprefix("hf://"), refresh=True, quiet=not show_progress(quiet))
    click.echo(str(path))


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


@main.command(name="models")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per model.")
def list_models(as_json: bool) -> None:
    """Models in the caches: the hub's (from `pull` or hf://) and the default model."""
    import json

    from .default_model import cached_default_model
    from .gguf_file import read_header
    from .hub import cached_models, describe_cached

    rows = [describe_cached(m) for m in cached_models()]
    default = cached_default_model()
    if default is not None:
        header = read_header(default)
        rows.insert(0, {"model": "default", "repo": None, "file": default.name, "revision": None,
                        "path": str(default), "size": default.stat().st_size, "parts": 1,
                        "architecture": header.architecture, "quant": header.quant})
    if as_json:
        for row in rows:
            click.echo(json.dumps(row))
        return
    if not rows:
        click.echo("no cached models (wasillama pull owner/repo fetches one)")
        return
    width = max(len(r["model"]) for r in rows)
    click.echo(f"{'MODEL':<{width}}  {'SIZE':>10}  {'ARCH':<10}  QUANT")
    for r in rows:
        parts = f" ({r['parts']} parts)" if r["parts"] > 1 else ""
        click.echo(f"{r['model']:<{width}}  {_size(r['size']):>10}  {r['architecture'] or '?':<10}  "
                   f"{r['quant'] or '?'}{parts}")


@main.command(name="rm")
@click.argument("reference")
def remove_model(reference: str) -> None:
    """Remove cached models: owner/repo (all of it), owner/repo:QUANT or owner/repo:FILE.gguf,
    or `default` (the default model; fetched again when next needed)."""
    if reference == "default":
        from .default_model import cached_default_model

        path = cached_default_model()
        if path is None:
            raise click.ClickException("the default model is not cached")
        path.unlink()
        path.with_suffix(".verified").unlink(missing_ok=True)
        click.echo(f"removed {path}")
        return
    from .hub import remove

    for path in remove(reference.removeprefix("hf://")):
        click.echo(f"removed {path}")


@main.command()
def info() -> None:
    """Available backends, the llama.cpp build and the wasm module cache."""
    from .backend import load_plugin
    from .wasm.engine import compiled_module, module_cache_path, wasmtime_version

    compiled = compiled_module()
    click.echo(f"wasillama {__version__}, wasmtime {wasmtime_version()}")
    click.echo(f"wasm: llama.wasm sha256 {compiled.module_sha256[:16]}…, compiled module cache "
               f"{module_cache_path(compiled.module_sha256)}")

    def show_devices(backend: Backend) -> None:
        for d in backend.devices():
            mem = f", {d.free_bytes / 2**30:.1f} of {d.total_bytes / 2**30:.1f} GiB free" if d.total_bytes else ""
            click.echo(f"  device {d.name} ({d.kind}): {d.description}{mem}")

    plugins = installed_plugins()
    if "native" not in plugins:
        click.echo("native: not installed (pip install ./native_fallback)")
    for name in plugins:
        try:
            plugin = load_plugin(name)
            be = plugin.create()
            try:
                click.echo(f"{name}: {be.system_info().strip()}")
                show_devices(be)
            finally:
                if plugin.per_model:
                    be.close()
        except WasillamaError as e:
            click.echo(f"{name}: unavailable ({e})")


@main.command()
@click.option("-m", "--model", "models", multiple=True, type=click.Path(dir_okay=False),
              help="GGUF file to serve, named by its file name (repeat for several; default: the embedded model).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8080, show_default=True)
@click.option("--pods", type=int, default=None, help="Sandboxes per model (more use more cores). [default: 1]")
@click.option("--threads", type=int, default=None, help="Threads per pod. [default: 1]")
@click.option("--parallel", type=int, default=None, help="Sequences per pod, batched together. [default: 4]")
@click.option("-c", "--ctx-size", "n_ctx", type=int, default=None, help="Tokens per sequence. [default: 2048]")
@click.option("--backend", type=click.Choice(["wasm", "native"]), default=None, help="[default: wasm]")
@click.option("--trust-model", is_flag=True, default=None, help="Allow the unsandboxed native backend.")
@click.option("--api-keys", type=click.Path(dir_okay=False, exists=True), default=None,
              help="File of API keys, one per line, optionally followed by a tenant name.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, exists=True), default=None,
              help="JSON config: models, tenants and their limits, queue (docs/server.md).")
@click.option("--jobs-db", default=None, help="SQLite file of the jobs API. [default: ./jobs.sqlite3]")
@click.option("--preload", is_flag=True, help="Load every model at start instead of at its first request.")
@click.option("--ray", "on_ray", is_flag=True,
              help="Run as a Ray Serve deployment (the ray extra; needs --config, which every replica reads).")
@click.option("--replicas", type=int, default=2, show_default=True, help="Ray Serve replicas (with --ray).")
@click.option("-v", "--verbose", is_flag=True, help="Show llama.cpp's log.")
def serve(models: tuple[str, ...], host: str, port: int, pods: int | None, threads: int | None,
          parallel: int | None, n_ctx: int | None, backend: str | None, trust_model: bool | None,
          api_keys: str | None, config_file: str | None, jobs_db: str | None, preload: bool, on_ray: bool,
          replicas: int, verbose: bool) -> None:
    """An OpenAI-compatible server (chat, completions, embeddings, jobs) for many tenants."""
    if on_ray:
        _serve_on_ray(config_file, models, host, port, replicas)
        return
    try:
        import uvicorn

        from .server import create_app, load_config
    except ImportError as e:
        raise click.UsageError(f"the server needs its extra: pip install 'wasillama[server]' ({e})") from e
    _setup_logging(verbose)
    logging.getLogger("wasillama.server").setLevel(logging.INFO)
    if not models and config_file is None:
        from .default_model import default_model_path

        models = (str(default_model_path()),)
    config = load_config(config_file, models=models, api_keys=api_keys, pods=pods, threads=threads,
                         parallel=parallel, n_ctx=n_ctx, backend=backend, trust_model=trust_model, jobs_db=jobs_db)
    click.echo(f"wasillama serve: http://{host}:{port}/v1 ({', '.join(m.name for m in config.models)})", err=True)
    uvicorn.run(create_app(config, preload=preload), host=host, port=port, log_level="info" if verbose else "warning")


def _serve_on_ray(config_file: str | None, models: tuple[str, ...], host: str, port: int, replicas: int) -> None:
    """`serve --ray`: start (or join) a Ray cluster and run the server's deployment on it until Ctrl-C."""
    if config_file is None or models:
        raise click.UsageError("--ray takes the server from --config alone (every replica reads that file)")
    try:
        import ray
        from ray import serve as ray_serve

        from .server.ray_serve import deployment
    except ImportError as e:
        raise click.UsageError(f"--ray needs the ray extra: pip install 'wasillama[ray]' ({e})") from e
    import time

    ray.init(address=os.environ.get("RAY_ADDRESS"))
    ray_serve.start(http_options={"host": host, "port": port})
    ray_serve.run(deployment(os.path.abspath(config_file), replicas=replicas).bind(), name="wasillama",
                  route_prefix="/")
    click.echo(f"wasillama serve on Ray: http://{host}:{port}/v1 ({replicas} replicas)", err=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        ray_serve.shutdown()  # type: ignore[no-untyped-call]
