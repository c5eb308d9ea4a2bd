"""Fetching reward weights: local cache first, then a fast reachability check, then the download.

Reward models need weights that live on a public hub (Hugging Face Hub, GitHub). Without network,
``open_clip`` / ``huggingface_hub`` keep retrying DNS for about 46 s before they give up. This
module answers within a few seconds instead:

1. a file already in the local cache is used without touching the network;
2. ``HF_HUB_OFFLINE=1`` (or ``TRANSFORMERS_OFFLINE=1``) fails at once;
3. otherwise a TCP connect to the hub host, bounded by ``PROBE_TIMEOUT_S`` (DNS included, run in a
   daemon thread), decides whether a download is attempted at all.

Failures raise :class:`WeightsUnavailableError` naming the weights, where they come from, and why
they could not be fetched.
"""

from __future__ import annotations

import os
import socket
import threading
import urllib.parse
from pathlib import Path

PROBE_TIMEOUT_S = 3.0
_TRUE = {"1", "true", "yes", "on"}


class WeightsUnavailableError(RuntimeError):
    """The weights a reward needs are not cached and cannot be downloaded now."""

    def __init__(self, weights: str, source: str, reason: str) -> None:
        self.weights = weights
        self.source = source
        self.reason = reason
        super().__init__(
            f"Cannot load the weights for {weights}: they are downloaded from {source}, {reason}. "
            "Connect to the internet once (they are cached afterwards), or pass a local copy "
            "(see docs/rewards.md, 'Where the weights come from')."
        )


def hub_offline_flag() -> str | None:
    """Name of the environment variable that forbids hub access, if one is set."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in _TRUE:
            return var
    return None


def host_reachable(host: str, port: int = 443, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """True when a TCP connection to ``host:port`` opens within ``timeout`` seconds (DNS included)."""
    result: dict[str, bool] = {"ok": False}

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result["ok"] = True
        except OSError:
            result["ok"] = False

    thread = threading.Thread(target=probe, daemon=True, name=f"probe-{host}")
    thread.start()
    thread.join(timeout + 0.5)
    return result["ok"]


def hf_endpoint_host() -> str:
    """Host name of the Hugging Face Hub endpoint (honours ``HF_ENDPOINT``)."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    return urllib.parse.urlparse(endpoint).hostname or "huggingface.co"


def ensure_can_download(weights: str, source: str, host: str) -> None:
    """Raise :class:`WeightsUnavailableError` unless a download from ``host`` can start now."""
    flag = hub_offline_flag()
    if flag:
        raise WeightsUnavailableError(weights, source, f"and {flag} is set, so the hub could not be reached")
    if not host_reachable(host):
        raise WeightsUnavailableError(
            weights, source, f"and the hub could not be reached (no connection to {host}:443 within {PROBE_TIMEOUT_S:.0f} s)"
        )


def cached_hf_file(repo_id: str, filename: str, cache_dir: str | None = None) -> str | None:
    """Path of ``repo_id/filename`` in the local Hugging Face cache, or None (never uses the network)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency of open_clip/diffusers
        return None
    found = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir)
    return found if isinstance(found, str) and Path(found).is_file() else None


def fetch_hf_file(repo_id: str, filename: str, weights: str, cache_dir: str | None = None) -> str:
    """Local path of ``repo_id/filename``: from the cache, else downloaded after a reachability check."""
    cached = cached_hf_file(repo_id, filename, cache_dir)
    if cached:
        return cached
    source = f"https://huggingface.co/{repo_id} (file {filename})"
    ensure_can_download(weights, source, hf_endpoint_host())
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(repo_id, filename, cache_dir=cache_dir)
    except Exception as exc:  # network error mid-way, missing file, ...
        raise WeightsUnavailableError(weights, source, f"and the download failed ({exc})") from exc


def fetch_url(url: str, weights: str, cache_dir: str | None = None) -> str:
    """Local path of the file at ``url`` (cached under ``cache_dir`` or ~/.cache/rlr_studio)."""
    directory = Path(cache_dir or Path.home() / ".cache" / "rlr_studio")
    target = directory / urllib.parse.unquote(Path(urllib.parse.urlparse(url).path).name)
    if target.is_file():
        return str(target)
    ensure_can_download(weights, url, urllib.parse.urlparse(url).hostname or url)
    import torch.hub

    directory.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(target), progress=False)
    except Exception as exc:
        raise WeightsUnavailableError(weights, url, f"and the download failed ({exc})") from exc
    return str(target)
