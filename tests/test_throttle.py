"""Which kind of 429: the pure classifier, recorded gateway bodies, and what the error says."""

from __future__ import annotations

import pytest

from deerluma import RateLimitError
from deerluma._decode import decode_error
from deerluma._throttle import Throttle, ThrottleKind, classify

from .conftest import sample

JSON = {"Content-Type": "application/json"}


@pytest.mark.parametrize(
    ("message", "limit", "window"),
    [
        ("您已达到请求数限制：1分钟内最多请求600次 (request id: 2026)", 600, 60.0),
        (
            "您已达到总请求数限制：2分钟内最多请求100次，包括失败次数，请检查您的请求是否正确",
            100,
            120.0,
        ),
        ("You have reached the limit: at most 600 requests in 1 minute", 600, 60.0),
        ("rate limit: 600 requests per minute", 600, 60.0),
        ("too many requests: 60 requests / 10s", 60, 10.0),
        ("Limit of 1000 requests within 60 seconds exceeded", 1000, 60.0),
        (
            "Rate limit reached for ray-2 in organization org-x on requests per min (RPM): "
            "Limit 3, Used 3, Requested 1.",
            3,
            60.0,
        ),
    ],
)
def test_a_message_that_names_its_limit_is_a_named_limit(
    message: str, limit: int, window: float
) -> None:
    assert classify(message, {}, None) == Throttle(ThrottleKind.LIMIT, limit, window)


@pytest.mark.parametrize(
    "headers",
    [
        {"RateLimit-Policy": "100;w=60"},
        {"x-ratelimit-limit": "100", "X-RateLimit-Window": "60"},
        {"X-RateLimit-Limit": "100", "X-RateLimit-Window": "1m0s"},
    ],
)
def test_headers_that_name_a_limit_and_its_window_are_a_named_limit(
    headers: dict[str, str],
) -> None:
    throttle = classify("too many requests", headers, None)
    assert (throttle.kind, throttle.limit, throttle.window) == (ThrottleKind.LIMIT, 100, 60.0)


@pytest.mark.parametrize(
    ("headers", "wait"),
    [
        ({"X-RateLimit-Reset": "12"}, 12.0),
        ({"X-RateLimit-Reset": str(1_000_000_000 + 30)}, 30.0),  # a Unix time
        ({"x-ratelimit-reset-requests": "6m0s"}, 360.0),
        ({"X-RateLimit-Reset-Requests": "20ms"}, 0.02),
    ],
)
def test_a_reset_header_says_when_to_ask_again(headers: dict[str, str], wait: float) -> None:
    throttle = classify(None, headers, None, wall=1_000_000_000.0)
    assert throttle.kind is ThrottleKind.RATE
    assert throttle.retry_after == pytest.approx(wait)


def test_retry_after_wins_over_a_reset_header() -> None:
    throttle = classify(None, {"X-RateLimit-Reset": "12"}, 3.0)
    assert throttle.retry_after == 3.0


@pytest.mark.parametrize(
    "message",
    [
        "当前分组上游负载已饱和，请稍后再试",
        "当前分组上游负载已饱和，请稍后再试 (request id: 2026)",
        "当前模型ray-2上游已饱和, 请稍后再试!",
        "所有可用凭据均已达到并发上限，请稍后重试。",
        "The upstream load for the current group is saturated. Please try again later.",
        "Upstream service overloaded",
    ],
)
def test_a_saturated_upstream_is_not_about_our_rate(message: str) -> None:
    throttle = classify(message, {}, None)
    assert throttle.kind is ThrottleKind.UPSTREAM and not throttle.ours


@pytest.mark.parametrize("message", [None, "", "too many requests", "rate limit exceeded"])
def test_a_plain_429_is_taken_as_our_rate(message: str | None) -> None:
    throttle = classify(message, {}, None)
    assert throttle.kind is ThrottleKind.RATE and throttle.ours


def test_new_apis_window_body_decodes_to_a_named_limit_with_its_hint() -> None:
    error = decode_error(429, JSON, sample("error_newapi_window.json"), task_id="t1")
    assert isinstance(error, RateLimitError)
    assert (error.kind, error.limit, error.window, error.retry_after) == ("limit", 600, 60.0, None)
    assert "allows 600 requests per 60s for this key" in str(error)
    assert "t1" in str(error)


def test_new_apis_total_window_body_counts_failures_too() -> None:
    error = decode_error(429, JSON, sample("error_newapi_window_total.json"))
    assert isinstance(error, RateLimitError)
    assert (error.kind, error.limit, error.window) == ("limit", 100, 120.0)


def test_new_apis_upstream_body_says_slowing_down_will_not_help() -> None:
    headers = {**JSON, "Retry-After": "2"}
    error = decode_error(429, headers, sample("error_newapi_upstream_saturated.json"))
    assert isinstance(error, RateLimitError)
    assert (error.kind, error.code, error.retry_after) == ("upstream", "upstream_error", 2.0)
    text = str(error)
    assert "upstream is saturated" in text and "slowing down will not help" in text
    assert "max_rps" not in text


def test_a_429_judged_stray_says_so_in_its_message() -> None:
    error = RateLimitError(message="too many requests", retry_after=1.0)
    assert error.kind == "rate" and "max_rps" in str(error)
    error.judged("stray")
    assert error.kind == "stray"
    assert "slowing down did not make rarer" in str(error) and "max_rps" not in str(error)
    assert Throttle.of(error) == Throttle(ThrottleKind.STRAY, retry_after=1.0)
