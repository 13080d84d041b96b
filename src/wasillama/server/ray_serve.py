"""Scale-out on Ray Serve: each replica is a whole wasillama server (its pods, tenants, queue,
metrics) behind Ray's HTTP proxy, which spreads requests over the replicas and restarts one that
dies; Ray's autoscaler adds and removes replicas with the load.

    serve run wasillama.server.ray_serve:app config=/etc/wasillama/server.json replicas=2
    wasillama serve --config server.json --ray --replicas 2

Needs the ray extra (``pip install 'wasillama[ray]'``). The jobs store is the config's
`jobs_db`, one SQLite file that every replica opens: they claim jobs from it atomically, and a
replica re-queues the running jobs of one that died (jobs.py: its pid on the same host, its
heartbeat elsewhere). That file must be on storage every replica reaches with working POSIX
locks: a local disk for replicas on one node (what the tests run), a shared volume with proper
locking for a multi-node cluster (not NFS without it). Per-tenant limits are per replica.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .app import create_app
from .config import load_config


def deployment(config_path: str, *, replicas: int | None = 2, autoscaling: Mapping[str, Any] | None = None,
               num_cpus: float = 1.0, max_ongoing_requests: int = 64) -> Any:
    """The Serve deployment (bind() it, then serve.run). replicas: a fixed count; or autoscaling:
    Ray's autoscaling_config (min_replicas, max_replicas, target_ongoing_requests, ...), which
    replaces it. num_cpus: what Ray reserves per replica (its pods' threads)."""
    from ray import serve

    def build() -> Any:  # runs in each replica: the server reads its config there
        return create_app(load_config(config_path), preload=True)

    options: dict[str, Any] = {"name": "wasillama", "ray_actor_options": {"num_cpus": num_cpus},
                               "max_ongoing_requests": max_ongoing_requests}
    if autoscaling is not None:
        options["autoscaling_config"] = dict(autoscaling)
    else:
        options["num_replicas"] = replicas
    return serve.deployment(serve.ingress(build)(), **options)


def app(args: Mapping[str, str]) -> Any:
    """The application builder of `serve run wasillama.server.ray_serve:app config=... [replicas=N]
    [min_replicas=N max_replicas=M target_ongoing_requests=K] [num_cpus=C]`."""
    if "config" not in args:
        raise ValueError("serve run wasillama.server.ray_serve:app needs config=PATH (the server's JSON config)")
    autoscaling = None
    if "max_replicas" in args:
        autoscaling = {"min_replicas": int(args.get("min_replicas", "1")), "max_replicas": int(args["max_replicas"]),
                       "target_ongoing_requests": float(args.get("target_ongoing_requests", "16"))}
    return deployment(args["config"], replicas=int(args.get("replicas", "2")), autoscaling=autoscaling,
                      num_cpus=float(args.get("num_cpus", "1"))).bind()
