"""Checks on what the caller passes, before any request is sent."""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from collections.abc import Iterable

import yarl

from .exceptions import ArgumentError, ConfigurationError, InvalidTaskId

__all__ = ["check_api_key", "check_base_url", "check_batch", "check_task_id", "check_whole"]

_FORBIDDEN = frozenset("/\\?#%")
_MAX_TASK_ID = 200
_PLAIN_ID = re.compile(rf"[A-Za-z0-9_.:~-]{{1,{_MAX_TASK_ID}}}")


def check_whole(name: str, value: object, least: int) -> int:
    """`value` itself when it is a whole number (not a bool) of at least `least`; else
    ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"{name} must be a whole number >= {least}, got {value!r}")
    return value


def check_batch(task_ids: Iterable[str], concurrency: int) -> list[str]:
    """The distinct ids of a batch, in order; TypeError or ValueError for what cannot be one.

    A lone string is refused (iterating it would poll its characters), and so
    is an id that is not a string; an unsafe string id is left for the batch
    to report as that id's InvalidTaskId.
    """
    if isinstance(concurrency, bool) or not isinstance(concurrency, int):
        raise TypeError(f"concurrency must be a whole number, got {concurrency!r}")
    if concurrency < 1:
        raise ArgumentError(
            f"{{concurrency}} must be at least 1, got {concurrency}",
            ["concurrency"],
            value=concurrency,
        )
    if isinstance(task_ids, str | bytes):
        raise TypeError(
            f"task_ids must be a collection of ids, not one string: write [{task_ids!r}]"
        )
    ids = list(dict.fromkeys(task_ids))
    for task_id in ids:
        if not isinstance(task_id, str):
            raise TypeError(f"task ids must be strings, got {task_id!r} in the batch")
    return ids


def check_task_id(task_id: object) -> str:
    """Return `task_id` if it is safe to put in a URL path segment, else raise InvalidTaskId.

    InvalidTaskId is a ValueError too.
    """
    if not isinstance(task_id, str):
        raise TypeError(f"task id must be a string, got {type(task_id).__name__}")
    problem = _task_id_problem(task_id)
    if problem:
        raise InvalidTaskId(task_id, problem)
    return task_id


def _task_id_problem(task_id: str) -> str | None:
    if _PLAIN_ID.fullmatch(task_id) and task_id not in (".", ".."):
        return None  # the usual UUID-like id: no need to look at each character
    if not task_id:
        return "it is empty"
    if len(task_id) > _MAX_TASK_ID:
        return f"it is longer than {_MAX_TASK_ID} characters"
    if task_id in (".", ".."):
        return "it is a relative path"
    for char in task_id:
        if char in _FORBIDDEN:
            return f"it contains {char!r}"
        if char.isspace():
            return "it contains whitespace"
        if unicodedata.category(char)[0] in "CZ":
            return "it contains a control or separator character"
    return None


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_api_key(key: str | None) -> str | None:
    """The key without the whitespace around it (as read from a file); None when nothing is left.

    A key with a control character inside cannot go in a header: refused here, by a
    message that never shows the key.
    """
    if key is None:
        return None
    key = key.strip()
    if any(ord(c) < 32 or ord(c) == 127 for c in key):
        raise ConfigurationError(
            "the API key contains a control character (a line break or a tab, say): "
            "it cannot be sent in a header; check how it was read"
        )
    return key or None


def check_base_url(base_url: str) -> yarl.URL:
    """Parse the API base url; refuse plain http except to loopback (the key would go in clear)."""
    url = yarl.URL(base_url)
    if url.scheme not in ("https", "http") or not url.host:
        raise ConfigurationError(
            f"{{base_url}} must be an http(s) URL with a host, got {base_url!r}",
            ["base_url"],
            value=base_url,
        )
    if url.scheme == "http" and not _is_loopback(url.host):
        raise ConfigurationError(
            f"refusing plain http:// to {url.host}: the API key would be sent unencrypted; "
            "use https://"
        )
    if url.user or url.password or url.query_string or url.fragment:
        raise ConfigurationError(
            "{base_url} must not carry credentials, a query or a fragment", ["base_url"]
        )
    return url


def without_password(url: str) -> str:
    """`url` as it may be shown (a ledger's, a rate store's): its password left out."""
    parsed = yarl.URL(url)
    return str(parsed.with_password(None)) if parsed.password else url
