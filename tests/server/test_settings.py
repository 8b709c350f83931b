"""`embedkit serve` with no flags runs exactly `ServerSettings()`, and its help shows those defaults."""

from __future__ import annotations

import inspect
from dataclasses import fields

import pytest

import embedkit.server
from embedkit.cli import main
from embedkit.server import ServerSettings
from embedkit.server.settings import DEFAULT_HOST, DEFAULT_PORT


def test_serve_without_flags_runs_server_settings_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EMBEDKIT_API_KEY", raising=False)
    parameters = inspect.signature(embedkit.server.serve).parameters
    assert (parameters["host"].default, parameters["port"].default) == (DEFAULT_HOST, DEFAULT_PORT)
    started: dict[str, object] = {}
    monkeypatch.setattr(embedkit.server, "serve", lambda model, **kwargs: started.update(kwargs, model=model))
    assert main(["serve"]) == 0
    assert started["settings"] == ServerSettings()
    assert (started["host"], started["port"]) == (DEFAULT_HOST, DEFAULT_PORT)


def test_every_setting_has_its_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = capsys.readouterr().out
    for field in fields(ServerSettings):
        assert f"--{field.name.replace('_', '-')}" in text, field.name


def test_help_shows_the_defaults_it_runs_with(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    defaults = ServerSettings()
    for shown in (
        f"(default {DEFAULT_HOST}",
        f"(default {DEFAULT_PORT})",
        f"(default {defaults.max_client_batch_size})",
        f"(default {defaults.max_batch_tokens})",
        f"(default {defaults.max_concurrent_requests})",
        f"(default {defaults.payload_limit / 1e6:g} MB)",
        f"(default {defaults.body_timeout:g})",
        f"(default {defaults.max_connections})",
        f"(default {str(defaults.auto_truncate).lower()},",
    ):
        assert shown in text, shown
