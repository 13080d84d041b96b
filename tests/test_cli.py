"""The wasillama command line, driven through click's test runner on real models."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from helpers import native_available
from wasillama import Model
from wasillama.cli import DEFAULT_SYSTEM, main


def test_run_raw_matches_the_api(synthetic_model: Path) -> None:
    result = CliRunner().invoke(main, ["run", "-m", str(synthetic_model), "--raw", "-p", "Once upon a time",
                                       "-n", "12", "--temp", "0"])
    assert result.exit_code == 0, result.output
    with Model.load(synthetic_model) as model, model.new_context() as ctx:
        expected = ctx.generate("Once upon a time", max_tokens=12, temperature=0).text
    assert result.output == expected + "\n"


def test_run_chat_on_the_default_model(smollm2_path: Path) -> None:
    result = CliRunner().invoke(main, ["run", "-m", str(smollm2_path), "-p", "What is the capital of France?",
                                       "-n", "24", "--temp", "0", "--timings"])
    assert result.exit_code == 0, result.output
    assert "Paris" in result.output
    assert "generation:" in result.output and "t/s" in result.output


def test_chat_keeps_the_conversation(smollm2_path: Path) -> None:
    turns = "My name is Ada.\nWhat is my name?\n/exit\n"
    result = CliRunner().invoke(main, ["chat", "-m", str(smollm2_path), "-n", "24", "--temp", "0"], input=turns)
    assert result.exit_code == 0, result.output
    first, second = result.output.rstrip("\n").split("\n")
    # The second answer is the one the whole history gives, not the second question alone.
    history = [{"role": "system", "content": DEFAULT_SYSTEM},
               {"role": "user", "content": "My name is Ada."}, {"role": "assistant", "content": first},
               {"role": "user", "content": "What is my name?"}]
    with Model.load(smollm2_path) as model, model.new_context() as ctx:
        # turn by turn as the CLI goes (the second reuses the first's cache: the same arithmetic)
        assert ctx.chat(history[:2], max_tokens=24, temperature=0).text == first
        assert ctx.chat(history, max_tokens=24, temperature=0).text == second
        alone = ctx.chat([history[0], history[3]], max_tokens=24, temperature=0).text
    assert alone != second


def test_bench_reports_pp_and_tg(synthetic_model: Path) -> None:
    result = CliRunner().invoke(main, ["bench", "-m", str(synthetic_model), "-p", "32", "-n", "8", "-r", "2"])
    assert result.exit_code == 0, result.output
    assert "pp32" in result.output and "tg8" in result.output


def test_missing_model_is_a_clean_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["run", "-m", str(tmp_path / "nope.gguf"), "-p", "hi"])
    assert result.exit_code == 1
    assert "error: model file not found" in result.output


def test_info_lists_backends() -> None:
    result = CliRunner().invoke(main, ["info"])
    assert result.exit_code == 0, result.output
    assert "wasm: llama.wasm sha256" in result.output
    assert "native" in result.output
    if native_available():  # the native line names the CPU variant and the instruction sets it uses
        from wasillama_native import cpu_info

        cpu = cpu_info()
        assert f"native: {cpu.describe()}" in result.output
