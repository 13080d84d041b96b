"""`wasillama serve`: an OpenAI-compatible, multi-tenant server over sandboxed pods (docs/server.md).

Needs the server extra: ``pip install 'wasillama[server]'``.
"""

from .app import Server, create_app
from .config import ModelConfig, ServerConfig, TenantConfig, load_config

__all__ = ["ModelConfig", "Server", "ServerConfig", "TenantConfig", "create_app", "load_config"]
