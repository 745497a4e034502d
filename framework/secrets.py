"""Recognising and scrubbing secrets in configurations before they are printed, saved or sent.

One rule for the whole framework: the run config refuses secret-looking keys (:mod:`framework.config`), and
every mapping that is logged, saved beside a checkpoint or sent to a dashboard passes through
:func:`redact_secrets` (the reporter adds the W&B API key's value to what is scrubbed).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

REDACTED = "***REDACTED***"

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


def redact_secrets(config: Any, secret_values: tuple[str, ...] = ()) -> Any:
    """A copy of ``config`` (nested dicts/lists) with secret-looking values replaced by :data:`REDACTED`.

    A value is redacted when its key names a secret (:func:`is_secret_name`) and it is set, or when it contains
    one of ``secret_values`` (a key's actual value), wherever it is. The input is not modified.
    """
    return _redact(config, tuple(v for v in secret_values if v))


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
