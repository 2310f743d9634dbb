"""The Hugging Face Hub: whether the user switched it off, and a quick probe of whether it answers."""
from __future__ import annotations

import os


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def hub_offline(datasets: bool = False) -> bool:
    """Whether the user switched the hub off (HF_HUB_OFFLINE, TRANSFORMERS_OFFLINE, HF_DATASETS_OFFLINE)."""
    flags = ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"] + (["HF_DATASETS_OFFLINE"] if datasets else [])
    return any(env_flag(v) for v in flags)


def hub_host() -> str:
    from urllib.parse import urlparse
    return urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"


def hub_reachable(timeout: float = 3.0) -> bool:
    """A 3-second TCP probe of the hub. Without it huggingface_hub and datasets retry for
    ~25 s before failing on a machine without network. Behind a proxy a direct connection
    may fail while the hub works, so then the libraries are left to try."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    import socket
    try:
        socket.create_connection((hub_host(), 443), timeout=timeout).close()
        return True
    except OSError:
        return False
