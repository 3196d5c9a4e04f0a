"""Secrets never reach the tracking store as given: values under keys that look like secrets are replaced by
:data:`REDACTED`, and passwords inside URLs (``scheme://user:PASSWORD@host``) are masked wherever they appear.

A key looks like a secret when one of its words (split at ``_ - .``, spaces and camelCase) is ``key``,
``token``, ``secret``, ``password``/``passwd``/``pwd``, ``credential(s)`` or ``auth``, or ends in ``token``,
``secret``, ``password`` or ``apikey`` (``hf_token``, ``apiKey``, ``AWS_SECRET_ACCESS_KEY``, ``clientSecret``,
``hftoken``); ``key`` counts unless a word beside it names a non-secret kind of key (``cell_key``,
``sort_key``). Counts are not secrets: ``max_tokens``/``input_tokens`` (plural words) are kept, and so are
numbers and booleans under a secret-looking key. (Used by ``tracking`` for params, tags and artifacts; scoring's own ``score_stats.json``
may share it later.)
"""

from __future__ import annotations

import re

REDACTED = "***"
_SECRET_WORDS = ("token", "secret", "secrets", "password", "passwords", "passwd", "pwd", "credential",
                 "credentials", "auth")
_SECRET_SUFFIXES = ("apikey", "token", "secret", "password", "passwd")
# "key" is a secret's name unless a word beside it says which kind of key it is
_NOT_SECRET_KEY = {"cell", "sweep", "sort", "cache", "group", "join", "partition", "primary", "foreign", "lookup",
                   "hash", "row", "column", "index", "metric", "param", "record", "query", "dedup", "order", "dict"}
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^/\s:@]*:)(?P<pw>[^/\s@]+)(?P<tail>@)")


def _words(key: str) -> list[str]:
    key = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", key)
    return [w for w in re.split(r"[\s_\-.:/]+", key.lower()) if w]


def is_secret_key(key) -> bool:
    """True for keys like ``api_key``, ``HF_TOKEN``, ``clientSecret``, ``db-password``; False for
    ``max_tokens``, ``tokenizer``, ``cell_key``, ``sort_key``... (see the module doc)."""
    if not isinstance(key, str):
        return False
    words = _words(key)
    for w in words:
        if w in ("key", "keys"):
            if not _NOT_SECRET_KEY.intersection(words):
                return True
        elif w in _SECRET_WORDS:
            return True
        elif any(w.endswith(s) for s in _SECRET_SUFFIXES):
            return True  # hftoken, clientsecret, dbpassword, apikey
    return False


def _mask_value(v):
    if isinstance(v, str):
        return REDACTED if v else v
    if isinstance(v, dict):
        return {k: _mask_value(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return type(v)(_mask_value(x) for x in v)
    return v  # numbers, booleans, None carry no secret


def redact_url(s: str) -> str:
    """``postgresql://user:pw@host/db`` -> ``postgresql://user:***@host/db``."""
    return _URL_PASSWORD.sub(lambda m: m["head"] + REDACTED + m["tail"], s)


def redact_secrets(obj):
    """A copy of ``obj`` (dicts, lists, tuples, strings, scalars) with secret-looking keys' string values and
    URL passwords replaced by ``***``. The input is not changed."""
    if isinstance(obj, dict):
        return {k: (_mask_value(v) if is_secret_key(k) else redact_secrets(v)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact_secrets(x) for x in obj)
    if isinstance(obj, str):
        return redact_url(obj)
    return obj
