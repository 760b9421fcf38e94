"""Fixtures of the stand-in's own tests: a fresh stand-in per test (not the suite's shared one)."""

import pytest
import requests

from sandbox.standin import StandIn

CLIENT_ID = "app.0123456789abcd.12345678"
CLIENT_SECRET = "s3cret-for-tests"


@pytest.fixture
def standin():
    with StandIn(CLIENT_ID, CLIENT_SECRET) as instance:
        yield instance
        assert instance.errors == []  # the stand-in itself never broke


@pytest.fixture
def http():
    with requests.Session() as session:
        session.trust_env = False  # never route loopback calls through a proxy
        yield session
