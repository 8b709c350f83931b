"""The on-disk cache of exported graphs: export once, reuse in every later process.

An entry is a directory named by a digest of its key (weights, config, family, adapter, dtype,
quantisation, embedkit and torch versions, the graph's inputs and outputs) holding the graph files and a
manifest with each file's sha256. An entry is used only when its manifest matches the key and every file
its recorded hash; anything else is rebuilt. Entries are built in a private staging directory and published with one
atomic rename, so two processes exporting at once never see or leave a half-written entry: the
first rename wins and the other process uses the winner's entry.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from embedkit.errors import ModelLoadError

__all__ = ["GraphCache", "GraphKey", "default_cache_dir"]

log = logging.getLogger(__name__)

CACHE_DIR_ENV = "EMBEDKIT_CACHE_DIR"
GRAPH_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"


def default_cache_dir() -> Path:
    """$EMBEDKIT_CACHE_DIR/onnx, else $XDG_CACHE_HOME/embedkit/onnx, else ~/.cache/embedkit/onnx."""
    if root := os.environ.get(CACHE_DIR_ENV):
        return Path(root).expanduser() / "onnx"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "embedkit" / "onnx"


@dataclass(frozen=True)
class GraphKey:
    """Everything an exported graph depends on; any change is another entry."""

    weights_digest: str
    config_digest: str
    family: str
    adapter: str  # "base", or the task adapter merged into the graph
    dtype: str
    quantize: str  # "none" or "int8"
    embedkit_version: str
    torch_version: str
    inputs: str  # the graph's input names, comma-separated: a graph reading other inputs is another graph
    outputs: str  # what it gives: output names, pooling modes, the export layout version (export.GRAPH_LAYOUT)

    @property
    def name(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return f"{self.family}-{self.adapter}-{self.quantize}-{hashlib.sha256(blob).hexdigest()[:20]}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


class GraphCache:
    """Graphs by key under `root` (default: `default_cache_dir()`)."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_cache_dir()

    def graph(self, key: GraphKey, build: Callable[[Path], dict]) -> tuple[Path, dict]:
        """The graph file for `key` and its manifest, running `build(graph_path) -> details` on a miss."""
        entry = self.root / key.name
        manifest = self.verified(entry, key)
        if manifest is not None:
            return entry / GRAPH_FILE, manifest
        if entry.exists():
            log.warning("%s: stale or corrupt ONNX cache entry; rebuilding it", entry)
            shutil.rmtree(entry, ignore_errors=True)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{key.name}.", dir=self.root))
        except OSError as exc:
            raise ModelLoadError(f"{self.root}: cannot write the ONNX cache ({exc}); set {CACHE_DIR_ENV}") from exc
        try:
            started = time.perf_counter()
            details = build(staging / GRAPH_FILE)
            seconds = time.perf_counter() - started
            files = {p.name: {"sha256": _sha256(p), "bytes": p.stat().st_size} for p in sorted(staging.iterdir())}
            manifest = {"key": asdict(key), "files": files, "build_seconds": round(seconds, 2), **details}
            (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))
            try:
                os.rename(staging, entry)  # atomic; refused when another process published first
            except OSError:
                winner = self.verified(entry, key)
                if winner is None:
                    raise
                log.info("%s: another process exported it first; using that", entry)
                return entry / GRAPH_FILE, winner
            log.info("exported %s to ONNX in %.1f s (%s)", key.family, seconds, entry)
            return entry / GRAPH_FILE, manifest
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    @staticmethod
    def verified(entry: Path, key: GraphKey) -> dict | None:
        """The manifest of the entry at `entry` if it was built for `key` and every file still has its
        recorded size and sha256; else None (the entry is then rebuilt)."""
        try:
            manifest = json.loads((entry / MANIFEST_FILE).read_text())
            if manifest["key"] != asdict(key):
                return None
            present = {p.name for p in entry.iterdir()} - {MANIFEST_FILE}
            if present != set(manifest["files"]) or GRAPH_FILE not in present:
                return None
            for name, recorded in manifest["files"].items():
                path = entry / name
                if path.stat().st_size != recorded["bytes"] or _sha256(path) != recorded["sha256"]:
                    return None
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return manifest
