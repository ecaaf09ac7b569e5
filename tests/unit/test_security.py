"""Binding beyond loopback needs a token or an explicit --insecure."""

import logging

import pytest

from orch.security import InsecureBind, check_bind, is_loopback


@pytest.mark.parametrize("host", ["127.0.0.1", "127.3.2.1", "::1", "localhost"])
def test_loopback_needs_nothing(host):
    assert is_loopback(host)
    check_bind("server", host, None, False)


def test_open_bind_without_token_refuses_and_says_why():
    with pytest.raises(InsecureBind, match="refusing to bind 0.0.0.0 without --token"):
        check_bind("agent", "0.0.0.0", None, False)


def test_token_or_insecure_allows_it(caplog):
    check_bind("server", "10.213.0.1", "s3cret", False)
    with caplog.at_level(logging.WARNING):
        check_bind("server", "0.0.0.0", None, True)
    assert "without a token (--insecure)" in caplog.text
