"""A hub name that cannot be loaded fails in seconds with one line, before any rank starts work: offline
(``HF_HUB_OFFLINE=1``) or with an unreachable hub (``HF_ENDPOINT`` at a closed port), through
``launch/pretrain.py`` and the other launch scripts; a cached name is loaded offline instead of retried."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from framework.training import hub
from framework.training.hub import HubError, check_hub_names

ROOT = Path(__file__).resolve().parents[1]
UNREACHABLE = "http://127.0.0.1:9"  # the discard port: nothing listens, the connection is refused at once


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT")}
    env["HF_HUB_CACHE"] = str(tmp_path / "hf-cache")  # an empty cache: the name is cached nowhere
    env.update(extra)
    return env


@pytest.mark.parametrize("env_extra", [{"HF_HUB_OFFLINE": "1"}, {"HF_ENDPOINT": UNREACHABLE}],
                         ids=["offline", "unreachable"])
@pytest.mark.parametrize("script, args", [
    ("pretrain.py", ["--model", "some/name"]),
    ("fill_mask.py", ["--model", "some/name", "[MASK]"]),
], ids=["pretrain", "fill_mask"])
def test_uncached_hub_name_fails_fast_in_one_line(script: str, args: list[str], env_extra: dict[str, str],
                                                   tmp_path: Path) -> None:
    started = time.monotonic()
    proc = subprocess.run([sys.executable, str(ROOT / "launch" / script), *args, *(
        ["--output-dir", str(tmp_path / "out")] if script == "pretrain.py" else [])],
        cwd=ROOT, env=_env(tmp_path, **env_extra), capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - started
    assert proc.returncode == 2, proc.stderr
    assert elapsed < 10, f"{elapsed:.1f} s"
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "Retry" not in proc.stderr
    assert "some/name" in lines[0] and "--local-dir" in lines[0]
    assert ("HF_HUB_OFFLINE" in lines[0]) if "HF_HUB_OFFLINE" in env_extra else ("unreachable" in lines[0])
    assert not (tmp_path / "out").exists()  # nothing was written


def _fake_cache(cache: Path, name: str) -> None:
    """The layout huggingface_hub's cache uses: refs/main names a snapshot holding config.json."""
    repo = cache / f"models--{name.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")


def test_cached_name_with_unreachable_hub_switches_to_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants as constants

    _fake_cache(tmp_path, "org/cached")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_ENDPOINT", UNREACHABLE)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    check_hub_names({"--model": "org/cached"}, timeout_s=2)
    assert os.environ["HF_HUB_OFFLINE"] == "1" and constants.HF_HUB_OFFLINE is True


def test_offline_with_cached_name_passes_and_paths_are_not_hub_names(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants as constants

    _fake_cache(tmp_path, "org/cached")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    check_hub_names({"--model": "org/cached", "--tokenizer": None})
    with pytest.raises(HubError, match="HF_HUB_OFFLINE"):
        check_hub_names({"--tokenizer": "org/absent"})
    # Local folders and path-shaped names are the callers' business (their own "no such folder" messages).
    check_hub_names({"--model": str(tmp_path), "--tokenizer": "./no/such/folder"})
    assert not hub.is_hub_name("a/b/c") and hub.is_hub_name("hfl/chinese-roberta-wwm-ext")


def test_probe_is_bounded_even_when_the_lookup_hangs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub, "_request", lambda name, timeout_s: time.sleep(30) or "ok")  # a resolver that hangs
    started = time.monotonic()
    assert hub.probe("org/name", timeout_s=0.5).startswith("unreachable: no answer")
    assert time.monotonic() - started < 3
