"""Recognising and scrubbing secrets in configurations and logs before they are printed, saved or sent.

One rule for the whole framework: the run config refuses secret-looking keys (:mod:`framework.config`), and
every mapping that is logged, saved beside a checkpoint or sent to a dashboard passes through
:func:`redact_secrets`, which scrubs entries whose key names a secret and, wherever they appear, the values of
the secrets configured on this machine (:func:`configured_secret_values`: the W&B API key, and environment
variables such as ``HF_TOKEN``). :class:`SecretRedactingFilter` does the same for log lines.
"""

from __future__ import annotations

import logging
import netrc
import os
import re
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

REDACTED = "***REDACTED***"
DEFAULT_WANDB_URL = "https://api.wandb.ai"
# A configured secret shorter than this is not scrubbed from text: "1" or "true" would be redacted everywhere.
MIN_SECRET_LENGTH = 8
# Environment variables whose values are scrubbed: secret names (is_secret_name) whose last word is one of
# these. "SECRET_DIR" or "GOOGLE_APPLICATION_CREDENTIALS" hold paths, which must survive in saved configs.
_ENV_SECRET_LAST_WORDS = ("key", "apikey", "token", "secret", "password", "passwd")

# Key names whose values are secrets wherever the words appear in them ...
_SECRET_SUBSTRINGS = ("apikey", "api_key", "secret", "password", "passwd", "credential", "private_key")
# ... and words that mark a secret only as the key's last word: "hf_token", "auth_token" are secrets, while
# "tokenizer", "mask_token_id" and "max_tokens" are not.
_SECRET_LAST_WORDS = ("token", "key")
# Second-to-last words that make "..._key" / "..._token" harmless: sort keys, special tokens of a tokenizer.
_HARMLESS_QUALIFIERS = {
    "key": ("sort", "dict", "primary", "group", "cache", "metric", "monitor"),
    "token": ("mask", "pad", "cls", "sep", "unk", "bos", "eos"),
}


def wandb_base_url() -> str:
    """The W&B server URL: ``WANDB_BASE_URL`` or the public cloud."""
    return os.environ.get("WANDB_BASE_URL", "").strip() or DEFAULT_WANDB_URL


def find_wandb_api_key() -> str | None:
    """The configured W&B API key (``WANDB_API_KEY``, else the netrc entry for the W&B host), or None."""
    key = os.environ.get("WANDB_API_KEY", "").strip()
    if key:
        return key
    netrc_path = Path(os.environ.get("NETRC", "") or Path.home() / ".netrc")
    if not netrc_path.is_file():
        return None
    host = urllib.parse.urlsplit(wandb_base_url()).hostname or ""
    try:
        entry = netrc.netrc(str(netrc_path)).authenticators(host)
    except (netrc.NetrcParseError, OSError) as err:
        logger.warning("could not read %s (%s); treating W&B as having no API key", netrc_path, type(err).__name__)
        return None
    return entry[2] if entry and entry[2] else None


def configured_secret_values() -> tuple[str, ...]:
    """The secrets configured here, to scrub wherever they appear: the W&B API key and the values of environment
    variables named like a secret key or token (``HF_TOKEN``, ``AWS_SECRET_ACCESS_KEY``), at least
    :data:`MIN_SECRET_LENGTH` characters each, longest first (a key that contains another is scrubbed whole)."""
    found = {find_wandb_api_key() or ""}
    for name, value in os.environ.items():
        words = [w for w in re.split(r"[^a-z0-9]+", name.lower()) if w]
        if words and words[-1] in _ENV_SECRET_LAST_WORDS and is_secret_name(name):
            found.add(value.strip())
    return tuple(sorted((v for v in found if len(v) >= MIN_SECRET_LENGTH), key=len, reverse=True))


def redact_secrets(config: Any, secret_values: tuple[str, ...] | None = None) -> Any:
    """A copy of ``config`` (nested dicts/lists) with secret-looking values replaced by :data:`REDACTED`.

    A value is redacted when its key names a secret (:func:`is_secret_name`) and it is set, or when it contains
    one of ``secret_values`` (default: :func:`configured_secret_values`), wherever it is. The input is not
    modified.
    """
    if secret_values is None:
        secret_values = configured_secret_values()
    return _redact(config, tuple(v for v in secret_values if v))


def redact_text(text: str, secret_values: tuple[str, ...] | None = None) -> str:
    """``text`` with every occurrence of a secret value (default: :func:`configured_secret_values`) replaced."""
    for secret in configured_secret_values() if secret_values is None else secret_values:
        if secret and secret in text:
            text = text.replace(secret, REDACTED)
    return text


class SecretRedactingFilter(logging.Filter):
    """A handler filter that scrubs the secrets configured when it was made from every record it passes.

    On handlers rather than loggers: a logger's filter does not see the records its children propagate. The
    secrets are read once (reading ``~/.netrc`` per record would cost every log line a file read).
    """

    def __init__(self, secret_values: tuple[str, ...] | None = None) -> None:
        super().__init__()
        self.secret_values = configured_secret_values() if secret_values is None else secret_values

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secret_values:
            return True
        message = record.getMessage()
        cleaned = redact_text(message, self.secret_values)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text, self.secret_values)
        return True


def install_log_redaction(handlers: list[logging.Handler] | None = None) -> SecretRedactingFilter:
    """Add one :class:`SecretRedactingFilter` to ``handlers`` (default: the root logger's) and return it."""
    secret_filter = SecretRedactingFilter()
    for handler in logging.getLogger().handlers if handlers is None else handlers:
        if not any(isinstance(f, SecretRedactingFilter) for f in handler.filters):
            handler.addFilter(secret_filter)
    return secret_filter


def _redact(value: Any, secret_values: tuple[str, ...]) -> Any:
    if isinstance(value, Mapping):
        return {
            k: REDACTED if is_secret_name(str(k)) and not _is_unset(v) else _redact(v, secret_values)
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return type(value)(_redact(v, secret_values) for v in value)
    if isinstance(value, str) and any(secret in value for secret in secret_values):
        return REDACTED
    return value


def _is_unset(value: Any) -> bool:
    """None or an empty string: nothing to hide, and showing it tells the reader the secret was not set."""
    return value is None or (isinstance(value, str) and value == "")


def is_secret_name(name: str) -> bool:
    """Whether a config key names a secret: it contains ``api_key``, ``secret``, ``password``... or ends with the
    word ``token`` or ``key`` (``hf_token``, ``wandb_key``; not ``mask_token``, ``sort_key`` or ``tokenizer``)."""
    snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()
    words = [w for w in re.split(r"[^a-z0-9]+", snake) if w]
    joined = "_".join(words)
    if any(s in joined or s in "".join(words) for s in _SECRET_SUBSTRINGS):
        return True
    if words and words[-1] in _SECRET_LAST_WORDS:
        return not (len(words) > 1 and words[-2] in _HARMLESS_QUALIFIERS[words[-1]])
    return False
