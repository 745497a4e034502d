"""Fail fast and in one line when a hub name cannot be loaded: before any rank starts work.

``--model hfl/chinese-roberta-wwm-ext`` on a machine that cannot reach the Hugging Face hub otherwise costs
about 50 seconds of ``Retrying in Ns [Retry k/5]`` and then a 70-line traceback per rank ending in
``OSError: We couldn't connect to ...``; with ``HF_HUB_OFFLINE=1`` a traceback all the same. :func:`check_hub_names`
runs first, in the launch scripts (``pretrain``, ``evaluate``, ``finetune``, ``fill_mask``):

1. a name that is an existing local folder is not a hub name: nothing to check;
2. a hub name already in the local cache (``huggingface_hub.try_to_load_from_cache``) loads without network;
   when the hub is unreachable, the process is switched to offline mode so that ``from_pretrained`` reads the
   cache at once instead of retrying;
3. otherwise one bounded probe (an HTTP ``HEAD`` of ``$HF_ENDPOINT/api/models/NAME``, :data:`PROBE_TIMEOUT_S`)
   tells a reachable hub from an unreachable one, and an unknown name from a known one.

Every refusal is a :class:`HubError` (a :class:`~framework.config.ConfigError`) whose message says how to
download the model once and pass the folder instead (README, "Using a model offline").
"""

from __future__ import annotations

import logging
import os
import re
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Mapping

from framework.config import ConfigError

logger = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 4.0
"""Seconds one connectivity probe may take: a reachable hub answers in well under a second."""
DEFAULT_ENDPOINT = "https://huggingface.co"
# What the hub accepts as a repository id: ``name`` or ``org/name``. Anything else (./x, a/b/c, ~/m) is a path,
# left to the callers' own "no such folder" checks.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")
# A model folder has config.json; a tokenizer-only repository at least one of these.
_CACHE_MARKERS = ("config.json", "tokenizer_config.json", "vocab.txt")


class HubError(ConfigError):
    """A hub name that cannot be loaded here (offline, unreachable hub, or no such model); says what to do."""


def is_hub_name(name: str) -> bool:
    """Whether ``name`` would be looked up on the hub: not an existing path, and shaped like ``org/name``."""
    return bool(_HUB_ID.fullmatch(name)) and not Path(name).expanduser().exists()


def _offline_env() -> bool:
    """``HF_HUB_OFFLINE`` (or the older ``TRANSFORMERS_OFFLINE``) set to a true value, as huggingface_hub reads it."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in {"1", "ON", "YES", "TRUE"}


def endpoint() -> str:
    """The hub the libraries would contact: ``$HF_ENDPOINT`` or huggingface.co."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def is_cached(name: str) -> bool:
    """Whether the local Hugging Face cache holds a snapshot of ``name`` (no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - a transformers dependency
        return False
    for filename in _CACHE_MARKERS:
        try:
            found = try_to_load_from_cache(name, filename)
        except Exception:  # noqa: BLE001 - an odd name (HFValidationError) is simply not cached
            return False
        if isinstance(found, str):
            return True
    return False


def probe(name: str, timeout_s: float = PROBE_TIMEOUT_S) -> str:
    """One bounded request about ``name``: ``"ok"``, ``"missing"`` (401/404: unknown, private or gated) or
    ``"unreachable: REASON"``.

    Run in a daemon thread and waited for ``timeout_s`` plus a second: the socket timeout does not cover the
    name lookup, which a broken resolver can stretch to half a minute.
    """
    answer: list[str] = []
    worker = threading.Thread(target=lambda: answer.append(_request(name, timeout_s)), name="hub-probe", daemon=True)
    worker.start()
    worker.join(timeout_s + 1.0)
    return answer[0] if answer else f"unreachable: no answer in {timeout_s + 1.0:.0f} s"


def _request(name: str, timeout_s: float) -> str:
    url = f"{endpoint()}/api/models/{urllib.parse.quote(name, safe='/')}"
    request = urllib.request.Request(url, method="HEAD")
    token = os.environ.get("HF_TOKEN")
    if token:  # a private model answers 401 without it
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s):  # noqa: S310 - the user's own HF_ENDPOINT
            return "ok"
    except urllib.error.HTTPError as exc:
        return "missing" if exc.code in (401, 404) else "ok"  # any other answer: the hub is there; let it explain
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return f"unreachable: {reason}"


def _how_to(flag: str, name: str) -> str:
    folder = name.rsplit("/", 1)[-1]
    return (f"download it once where the hub is reachable (`huggingface-cli download {name} --local-dir "
            f"models/{folder}`) and pass {flag} models/{folder} (README: Using a model offline)")


def _go_offline() -> None:
    """Make ``from_pretrained`` read the cache without trying the network (env for child processes, and the
    constant huggingface_hub read at import, in case it was imported already)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        import huggingface_hub.constants as constants

        constants.HF_HUB_OFFLINE = True
    except ImportError:  # pragma: no cover
        pass


def check_hub_names(names: Mapping[str, str | None], timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Raise :class:`HubError` for the first hub name in ``names`` (flag -> name) that cannot be loaded here.

    Local folders and empty entries are skipped; the hub is probed at most once, whatever the number of names.
    """
    hub_names = [(flag, name) for flag, name in names.items() if name and is_hub_name(name)]
    if not hub_names:
        return
    offline = _offline_env()
    reachable: str | None = None
    for flag, name in hub_names:
        cached = is_cached(name)
        if offline:
            if not cached:
                raise HubError(f"{flag} {name}: HF_HUB_OFFLINE is set and {name} is not in the local Hugging Face "
                               f"cache; {_how_to(flag, name)}")
            continue
        answer = probe(name, timeout_s) if reachable is None or reachable == "ok" else reachable
        if answer.startswith("unreachable"):
            reachable = answer
            if cached:
                logger.info("the hub %s is unreachable (%s); loading %s from the local cache", endpoint(),
                            answer.split(": ", 1)[-1], name)
                _go_offline()
                continue
            raise HubError(f"{flag} {name}: not a local folder, not in the local Hugging Face cache, and the hub "
                           f"{endpoint()} is unreachable ({answer.split(': ', 1)[-1]}); {_how_to(flag, name)}")
        reachable = "ok"
        if answer == "missing" and not cached:
            raise HubError(f"{flag} {name}: no such folder here, and the hub {endpoint()} has no public model of "
                           f"that name (a private one needs HF_TOKEN); check the spelling, or give a local folder")
