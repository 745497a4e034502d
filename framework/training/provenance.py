"""What a run actually used, for the ``resolved:`` section of its saved ``run_config.yaml``/``.json``.

The settings sections of a saved run config hold what was asked (``deepspeed_config: null``, ``vocab_size:
8000`` as a bound); this record holds what that became: the DeepSpeed JSON and its resolved content, the real
vocabulary size, the model's source and hub revision, the package versions and the framework's git commit.
With ``training.deepspeed_config`` (and ``data.packing``) set to the resolved values too, ``--config
OUTPUT/run_config.yaml`` runs the same configuration again; the record says what to check when it does not
(another torch, another commit).
"""

from __future__ import annotations

import json
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from framework.config import REPO_ROOT

PACKAGES = ("torch", "transformers", "deepspeed", "jieba", "numpy")


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed versions of ``names`` (``None`` for one that is not installed)."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def framework_commit(root: Path = REPO_ROOT) -> dict[str, Any]:
    """``{"commit": sha or None, "dirty": bool or None}`` of the framework's git checkout (no git: ``None``s)."""
    def git(*args: str) -> str | None:
        try:
            proc = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return proc.stdout.strip() if proc.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def _plain(value: Any) -> Any:
    """JSON- and safe-YAML-ready (tuples become lists, paths strings)."""
    return json.loads(json.dumps(value, default=str))


def resolved_record(ds: Any, model: Any, tokenizer: Any, world_size: int, model_source: str | None,
                    tokenizer_source: str | None) -> dict[str, Any]:
    """The ``resolved:`` section for a run (rank 0 calls it once, after the engine is built).

    Args:
        ds: the :class:`~framework.training.deepspeed_config.ResolvedDeepSpeedConfig`.
        model: the model as built (its config names the hub revision it was downloaded at, if any).
        tokenizer: the tokenizer in use; its length is the real vocabulary size.
        world_size: data-parallel ranks.
        model_source: ``--model`` or ``--model-config`` as given (``None``: the ``tiny`` default).
        tokenizer_source: the tokenizer folder or hub name actually loaded.
    """
    config = getattr(model, "config", None)
    return _plain({
        "deepspeed_config": str(ds.source),
        "deepspeed": ds.config,
        "client_optimizer": ds.client_optimizer,
        "total_steps": ds.total_steps,
        "world_size": world_size,
        "vocab_size": len(tokenizer),
        "model_vocab_rows": getattr(config, "vocab_size", None),
        "model_source": model_source,
        # transformers records the hub commit a checkpoint was resolved to; None for a local folder or scratch.
        "model_revision": getattr(config, "_commit_hash", None),
        "tokenizer": tokenizer_source,
        "packages": package_versions(),
        "framework": framework_commit(),
    })
