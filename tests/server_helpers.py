"""A live `wasillama serve` process for the server tests: started on a free loopback port with
a JSON config, waited for, stopped (or killed) by the test."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

SHARED_MODELS = Path(__file__).resolve().parents[2] / "shared" / "models"
MINILM = SHARED_MODELS / "all-MiniLM-L6-v2-q8_0.gguf"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveServer:
    def __init__(self, config: dict[str, Any], workdir: Path, *, jobs_db: Path | None = None,
                 preload: bool = True, ray_replicas: int | None = None) -> None:
        self.preload = preload
        self.ray_replicas = ray_replicas  # `serve --ray`: the jobs file is the config's
        self.workdir = workdir
        self.config_path = workdir / "server.json"
        self.config_path.write_text(json.dumps(config))
        self.jobs_db = jobs_db or workdir / "jobs.sqlite3"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / f"server-{self.port}.log"

    def start(self, timeout: float = 180.0) -> LiveServer:
        cli = Path(sys.executable).with_name("wasillama")
        cmd = [str(cli) if cli.exists() else "wasillama", "serve", "--config", str(self.config_path),
               "--port", str(self.port)]
        if self.ray_replicas is not None:
            cmd += ["--ray", "--replicas", str(self.ray_replicas)]
        else:
            cmd += ["--jobs-db", str(self.jobs_db), *(["--preload"] if self.preload else [])]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, cwd=self.workdir, env={**os.environ})
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}:\n{self.log.read_text()[-4000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=2.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the server did not start in {timeout} s:\n{self.log.read_text()[-4000:]}")

    def kill(self) -> None:
        """SIGKILL: no shutdown hook runs."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            # SIGINT: `serve --ray` shuts Serve and its local Ray cluster down on KeyboardInterrupt
            self.proc.send_signal(signal.SIGINT if self.ray_replicas is not None else signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    def health(self) -> dict[str, Any]:
        body: dict[str, Any] = httpx.get(self.url + "/health", timeout=10.0).json()
        return body
