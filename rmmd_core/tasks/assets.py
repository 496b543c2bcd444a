"""Checkpoints the project builds itself (shapes teacher and classifier): save, validate, load.

A checkpoint is a ``torch.save`` dict ``{"format", "kind", "config", "state_dict", "meta"}`` loaded with
``weights_only=True``. ``assets/MANIFEST.json`` records each file's SHA-256 and the exact command that
rebuilds it; loading checks existence, hash, format, kind and a strict ``load_state_dict``. Any failure
raises :class:`AssetError` whose message is that command, so a missing or corrupt file is never used
silently.
"""
from __future__ import annotations

import hashlib
import json
import pathlib

import torch

FORMAT = "rmmd_core.asset.v1"
ASSET_DIR = pathlib.Path(__file__).resolve().parents[1] / "assets"
MANIFEST = ASSET_DIR / "MANIFEST.json"

# How each asset is rebuilt (run from the repository root). The demo and tests quote these verbatim.
REBUILD = {
    "shapes_teacher.pt": "python python/train_image_teacher.py --out rmmd_core/assets/shapes_teacher.pt",
    "shapes_classifier.pt": "python python/train_classifier.py --out rmmd_core/assets/shapes_classifier.pt",
}


class AssetError(RuntimeError):
    """A built-in checkpoint is missing, corrupt or of the wrong kind; the message says how to rebuild it."""


def sha256(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _manifest() -> dict:
    return json.loads(MANIFEST.read_text()) if MANIFEST.exists() else {}


def save_asset(module: torch.nn.Module, kind: str, path: pathlib.Path, meta: dict, command: str) -> str:
    """Write ``module`` (with its ``config`` dict) to ``path``; record hash + command in the manifest
    when ``path`` lies in the package's asset folder. Returns the SHA-256."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    torch.save({"format": FORMAT, "kind": kind, "config": dict(module.config), "state_dict": state,
                "meta": meta}, path)
    digest = sha256(path)
    if path.resolve().parent == ASSET_DIR:
        man = _manifest()
        man[path.name] = {"sha256": digest, "kind": kind, "command": command, "meta": meta}
        MANIFEST.write_text(json.dumps(man, indent=2, sort_keys=True) + "\n")
    return digest


def load_asset(name: str, kind: str, build, path: pathlib.Path | None = None) -> tuple[torch.nn.Module, dict]:
    """Load asset ``name`` (or an explicit ``path``) as a module made by ``build(**config)``.

    Returns ``(module in eval mode, meta)``. Raises :class:`AssetError` naming the rebuild command.
    """
    p = pathlib.Path(path) if path is not None else ASSET_DIR / name
    cmd = REBUILD.get(name, "the script that produced it")
    fix = f"rebuild it with:\n    {cmd}"
    if not p.exists():
        raise AssetError(f"checkpoint {p} is missing; {fix}")
    expected = _manifest().get(name, {}).get("sha256") if path is None else None
    if expected is not None and sha256(p) != expected:
        raise AssetError(f"checkpoint {p} does not match its SHA-256 in {MANIFEST.name} (corrupt or partial "
                         f"download; with Git LFS, run `git lfs pull`); {fix}")
    try:
        ck = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is reported the same way
        raise AssetError(f"checkpoint {p} cannot be read ({type(err).__name__}: {err}); {fix}") from err
    if not isinstance(ck, dict) or ck.get("format") != FORMAT or ck.get("kind") != kind:
        got = ck.get("kind") if isinstance(ck, dict) else type(ck).__name__
        raise AssetError(f"checkpoint {p} is not a {FORMAT} '{kind}' file (got {got!r}); {fix}")
    try:
        module = build(**ck["config"])
        module.load_state_dict(ck["state_dict"], strict=True)
    except (TypeError, RuntimeError, KeyError) as err:
        raise AssetError(f"checkpoint {p} does not fit the current '{kind}' network ({err}); {fix}") from err
    return module.eval(), ck.get("meta", {})
