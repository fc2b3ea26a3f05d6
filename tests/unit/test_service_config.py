"""The service-facing config keys (hub security, log format) and the log line formats."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from agent.service.logs import JsonFormatter, KeyValueFormatter, configure
from config.loader import ConfigError, load_config

HEAD = """
[agent]
site = "plant-a"
id = "edge-01"
{agent}

[hub]
url = "{url}"
{hub}

[[sources]]
name = "line1"
type = "opcua"
endpoint = "opc.tcp://127.0.0.1:4840"
  [[sources.signals]]
  node = "ns=2;s=A"
  event = "telemetry"
  asset = "line1"
"""


def problems(tmp_path: Path, *, url: str = "mqtts://hub:8883", hub: str = "",
             agent: str = "") -> list[str]:
    path = tmp_path / "agent.toml"
    path.write_text(HEAD.format(url=url, hub=hub, agent=agent))
    try:
        load_config(path)
    except ConfigError as error:
        return [problem.format() for problem in error.problems]
    return []


def test_an_inline_password_is_refused_and_the_way_to_give_one_is_named(tmp_path: Path) -> None:
    [problem] = problems(tmp_path, hub='username = "u"\npassword = "hunter2"')
    assert ":10: hub.password: write where the secret is, not the secret itself" in problem
    assert '"credential:NAME"' in problem and '"file:/absolute/path"' in problem
    assert "hunter2" not in problem  # a secret is never echoed back


def test_secret_and_file_references_that_are_accepted(tmp_path: Path) -> None:
    assert problems(tmp_path, hub='username = "u"\npassword = "credential:mqtt-password"\n'
                    'ca_file = "/etc/ca.pem"\ncert_file = "/etc/c.pem"\n'
                    'key_file = "credential:client.key"') == []
    assert problems(tmp_path, hub='username = "u"\npassword = "file:/etc/secret"') == []


@pytest.mark.parametrize(
    ("hub", "url", "expected"),
    [
        ('ca_file = "/etc/ca.pem"', "mqtt://hub", "hub.ca_file: `ca_file` needs a TLS hub URL"),
        ('key_file = "/etc/k.pem"', "mqtts://hub", "hub.key_file: `key_file` is set: give its"),
        ('cert_file = "/etc/c.pem"', "mqtts://hub", "hub.key_file: `cert_file` is set: give its"),
        ('cert_file = "c.pem"\nkey_file = "/k"', "mqtts://hub", "expected an absolute path"),
        ('password = "file:/etc/p"', "mqtts://hub", "give the `username` it belongs to"),
        ('username = "u"\npassword = "file:p"', "mqtts://hub", "give an absolute path after"),
        ("session_expiry_s = -1", "mqtts://hub", "hub.session_expiry_s: expected a number"),
    ],
)
def test_bad_hub_security_settings_say_what_is_wrong(
    tmp_path: Path, hub: str, url: str, expected: str
) -> None:
    found = problems(tmp_path, url=url, hub=hub)
    assert any(expected in problem for problem in found), found


def test_log_format_must_be_known(tmp_path: Path) -> None:
    [problem] = problems(tmp_path, agent='log_format = "xml"')
    assert "agent.log_format: expected one of 'keyvalue' or 'json'" in problem


def _record(**extra: object) -> logging.LogRecord:
    record = logging.LogRecord("agent.runtime", logging.WARNING, __file__, 1,
                               "source=%s unavailable: %s", ("line1", 'said "no"'), None)
    record.__dict__.update(extra)
    return record


def test_keyvalue_lines_quote_the_message_and_add_fields() -> None:
    line = KeyValueFormatter().format(_record(source="line1", next="retry in 2 s"))
    assert 'logger=agent.runtime msg="source=line1 unavailable: said \\"no\\""' in line
    assert line.endswith('source=line1 next="retry in 2 s"')
    journal = KeyValueFormatter(journal=True).format(_record())
    assert journal.startswith("<4>level=warning ")  # syslog priority for journald, no time


def test_json_lines_are_one_object_each() -> None:
    document = json.loads(JsonFormatter().format(_record(source="line1")))
    assert document["level"] == "warning" and document["source"] == "line1"
    assert document["msg"] == 'source=line1 unavailable: said "no"'
    assert "traceback" not in document


@pytest.mark.parametrize("level", ["info", "debug"])
def test_a_library_connection_error_is_left_to_the_connector_but_a_bug_shows(
    level: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """What asyncua logs when a server goes away (its publish loop "crashed" on a closed
    connection) is not printed: the connector says it in its own words. Through the real
    logging set-up; a bug's error (not a connection error) keeps its traceback."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure(level, "keyvalue")
        library = logging.getLogger("asyncua.client.ua_session.UaSession")
        for error in (ConnectionError("Connection is closed"), ValueError("bad struct")):
            try:
                raise error
            except Exception:
                library.exception("Publish iteration crashed; retrying in 1s")
        printed = capsys.readouterr().err
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    assert "ValueError: bad struct" in printed  # a possible bug: shown, with its traceback
    if level == "debug":
        assert "ConnectionError: Connection is closed" in printed
    else:
        assert "ConnectionError" not in printed
        assert printed.count("Publish iteration crashed") == 1
