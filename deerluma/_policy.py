"""The polling policy: every knob of the poll engine, as validated data."""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any, Literal

import attrs

from ._validate import check_whole
from .exceptions import ArgumentError

__all__ = ["PollPolicy", "Seconds", "seconds_of", "to_seconds"]

Seconds = float | timedelta
"""A length of time: seconds, or a ``timedelta``."""


def to_seconds(value: Seconds) -> float:
    """Accept a number of seconds or a timedelta (not a bool: True is no length of time)."""
    if isinstance(value, bool) or not isinstance(value, int | float | timedelta):
        raise TypeError(f"a duration must be a number of seconds or a timedelta, got {value!r}")
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if seconds != seconds or seconds < 0:
        raise ValueError(f"a duration must be 0 or more seconds, got {value!r}")
    return seconds


def _as_seconds(value: Seconds) -> float:
    """A timedelta as seconds; anything else as given, for the field's validator to judge."""
    return value.total_seconds() if isinstance(value, timedelta) else value


def _as_optional_seconds(value: Seconds | None) -> float | None:
    return None if value is None else _as_seconds(value)


def seconds_of(name: str, value: object, *, zero: bool = False) -> float:
    """`value` (seconds, or a timedelta) as seconds, or an error naming `name`: more than 0
    seconds (or 0 too, with `zero`), finite, and not a bool."""
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds or a timedelta, got {value!r}")
    if not math.isfinite(value):
        hint = "{none}" if name == "timeout" else ""
        raise ArgumentError(
            f"{{{name}}} must be a finite number of seconds{hint}, got {value!r}",
            {name: name, "none": " (None: no deadline)"},
            value=value,
        )
    if value < 0 or (value == 0 and not zero):
        least = "0 or more" if zero else "more than 0"
        raise ArgumentError(
            f"{{{name}}} must be {least} seconds, got {value!r}", [name], value=value
        )
    return float(value)


def _as_refresh(value: Seconds | str | None) -> Any:
    """A timedelta as seconds; anything else as given, for the field's validator to judge."""
    return value.total_seconds() if isinstance(value, timedelta) else value


def _check(attribute: attrs.Attribute[Any], value: object, *, zero: bool) -> None:
    seconds_of(attribute.name, value, zero=zero)


def _seconds(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """A length of time more than 0 (None where the field allows it: no limit)."""
    if value is not None:
        _check(attribute, value, zero=False)


def _delay(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """A length of time, 0 or more."""
    _check(attribute, value, zero=True)


@attrs.frozen(kw_only=True)
class PollPolicy:
    """How waits pace their polls; set one per Session or pass one per call.

    With a server estimate a wait sleeps until the earliest moment the
    generation could be done (the estimate may be off by `hint_error` either
    way), learns the estimate's bias, then closes in every `min_interval`.
    Without one it reads the Session's timing history: it skips the ages at
    which generations have not been seen to finish, polls every
    `learned_interval` where they do, and every `unhinted_interval` where the
    history says nothing (as a plain loop would). `expected_duration` states a
    prior for a Session with no history yet; `learn=False` neither reads nor
    feeds the history. Behind a gateway that serves its own rows (see
    `refresh`), a wait looks just after each refresh that may hold the end;
    `refresh="live"` turns that learning off (`learn=False` does not).
    No sleep ends past the deadline, and the last poll happens just before it.
    """

    #: Overall deadline in seconds (None: wait forever).
    timeout: float | None = attrs.field(
        default=900.0, converter=_as_optional_seconds, validator=_seconds
    )
    #: Pause before the first poll (cut short by the deadline).
    initial_delay: float = attrs.field(default=0.0, converter=_as_seconds, validator=_delay)
    #: Spacing of polls once an estimate says completion is due: bounds how late it is noticed.
    min_interval: float = attrs.field(default=0.9, converter=_as_seconds, validator=_seconds)
    #: The longest single sleep, whatever the estimate says.
    max_interval: float = attrs.field(default=60.0, converter=_as_seconds, validator=_seconds)
    #: Spacing of polls when neither the server nor the history says anything.
    unhinted_interval: float = attrs.field(default=3.0, converter=_as_seconds, validator=_seconds)
    #: Spacing of polls at ages where the history has seen generations finish.
    learned_interval: float = attrs.field(default=2.5, converter=_as_seconds, validator=_seconds)
    #: A prior for a Session with no history: generations take about this long.
    expected_duration: float | None = attrs.field(
        default=None, converter=_as_optional_seconds, validator=_seconds
    )
    #: Read and feed the Session's timing history (False: every wait starts from nothing).
    learn: bool = True
    #: How far off `estimate_wait_seconds` (or `expected_duration`) may be, as a fraction.
    hint_error: float = attrs.field(default=0.3)
    #: Sleeps vary by up to this fraction at random, so that many waiters never align.
    jitter: float = attrs.field(default=0.1)
    #: Polls failing in a row (after each request's own retries) before giving up.
    max_consecutive_errors: int = attrs.field(default=5)
    #: How the gateway answers a GET: None learns it from the answers (the default); a number
    #: of seconds says it serves its own rows, refreshed that often (new-api and its forks);
    #: "live" says it asks the upstream on every GET.
    refresh: float | Literal["live"] | None = attrs.field(default=None, converter=_as_refresh)

    @refresh.validator
    def _refresh(self, attribute: attrs.Attribute[object], value: object) -> None:
        if value is None or value == "live":
            return
        if isinstance(value, str):
            raise ValueError(f'refresh must be seconds, "live" or None, got {value!r}')
        _check(attribute, value, zero=False)

    @hint_error.validator
    @jitter.validator
    def _fraction(self, attribute: attrs.Attribute[float], value: float) -> None:
        if not 0 <= value < 1:
            raise ValueError(f"{attribute.name} must be in [0, 1), got {value!r}")

    @max_consecutive_errors.validator
    def _count(self, attribute: attrs.Attribute[int], value: int) -> None:
        check_whole(attribute.name, value, 0)

    def __attrs_post_init__(self) -> None:
        if self.min_interval > self.max_interval:
            raise ValueError(
                f"min_interval ({self.min_interval:g}) must not exceed "
                f"max_interval ({self.max_interval:g})"
            )
