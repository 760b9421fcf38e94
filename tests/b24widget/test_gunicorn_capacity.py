"""The gunicorn config bounds processes x threads to the database connection budget."""

import runpy
from pathlib import Path

import pytest

CONFIG = str(Path(__file__).resolve().parents[2] / "b24widget" / "gunicorn.py")


def load(monkeypatch, cores, **env):
    import multiprocessing

    monkeypatch.setattr(multiprocessing, "cpu_count", lambda: cores)
    for name in ("GUNICORN_WORKERS", "GUNICORN_THREADS", "DB_CONNECTION_BUDGET"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return runpy.run_path(CONFIG)


def test_a_big_host_is_held_to_the_connection_budget(monkeypatch):
    config = load(monkeypatch, 16)  # 33 workers by cores x 4 threads would be 132 connections
    assert config["workers"] * config["threads"] <= 80 and config["workers"] == 20


def test_the_worked_example_of_the_readme(monkeypatch):
    config = load(monkeypatch, 16, DB_CONNECTION_BUDGET="41")
    assert (config["workers"], config["threads"]) == (10, 4)


def test_a_small_host_uses_its_cores(monkeypatch):
    assert load(monkeypatch, 2)["workers"] == 5


def test_explicit_settings_over_the_budget_refuse_to_start(monkeypatch):
    with pytest.raises(SystemExit, match="exceeds DB_CONNECTION_BUDGET"):
        load(monkeypatch, 2, GUNICORN_WORKERS="30", GUNICORN_THREADS="4", DB_CONNECTION_BUDGET="50")
    with pytest.raises(SystemExit, match="whole number"):
        load(monkeypatch, 2, GUNICORN_THREADS="many")
