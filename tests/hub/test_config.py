"""`hub.toml`: the annotated example loads; mistakes are reported located, in the file's terms;
the seq range arithmetic the gap scan relies on."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.loader import ConfigError
from hub.config import load_hub_config
from hub.ranges import complement, merged, runs, split

EXAMPLE = Path(__file__).resolve().parents[2] / "hub" / "hub.example.toml"


def test_the_annotated_example_loads_with_paths_relative_to_it() -> None:
    config = load_hub_config(EXAMPLE)
    assert config.broker.events_filter == "$share/hub/mfg/+/+/events/#"
    assert config.gaps.enabled and config.gaps.key_file == EXAMPLE.parent / "keys/hub.key.pem"


def test_a_mistake_is_reported_with_file_line_and_key(tmp_path: Path) -> None:
    path = tmp_path / "hub.toml"
    path.write_text(
        '[broker]\nurl = "mqtt://127.0.0.1:1883"\nclient_id = "hub-1"\nreceive_maximum = 0\n'
        '[database]\nurl = "postgresql://h/db"\n[gaps]\nopen_after = 5\n'
    )
    with pytest.raises(ConfigError) as caught:
        load_hub_config(path)
    text = str(caught.value)
    assert f"{path}:4: broker.receive_maximum:" in text
    assert f"{path}:8: gaps.open_after:" in text


def test_gap_healing_needs_the_hubs_key(tmp_path: Path) -> None:
    path = tmp_path / "hub.toml"
    path.write_text(
        '[broker]\nurl = "mqtt://127.0.0.1:1883"\nclient_id = "hub-1"\n'
        '[database]\nurl = "postgresql://h/db"\n[gaps]\n'
    )
    with pytest.raises(ConfigError, match="key_file"):
        load_hub_config(path)


def test_seq_ranges() -> None:
    assert runs([7, 1, 2, 3, 3]) == [(1, 3), (7, 7)]
    assert merged([(5, 9), (1, 3), (4, 4), (20, 21)]) == [(1, 9), (20, 21)]
    assert complement([(2, 3), (6, 8), (7, 12)], 1, 14) == [(1, 1), (4, 5), (13, 14)]
    assert complement([], 3, 5) == [(3, 5)]
    assert split((10, 34), 10) == [(10, 19), (20, 29), (30, 34)]


def test_status_and_dashboard_sections(tmp_path: Path) -> None:
    example = load_hub_config(EXAMPLE)
    assert example.status.enabled and example.status.keep_hours == 48.0
    dashboard = example.dashboard
    assert dashboard.enabled and (dashboard.host, dashboard.port) == ("127.0.0.1", 8780)
    path = tmp_path / "hub.toml"
    base = '[broker]\nurl = "mqtt://127.0.0.1:1883"\nclient_id = "hub-1"\n' \
        '[database]\nurl = "postgresql://h/db"\n'
    path.write_text(base)
    bare = load_hub_config(path)
    assert not bare.dashboard.enabled and bare.status.enabled  # no section: no web server
    path.write_text(base + '[dashboard]\nport = 0\nusername = "ops"\n')
    with pytest.raises(ConfigError, match="password_file"):
        load_hub_config(path)
    path.write_text(base + '[dashboard]\nport = 0\nusername = "ops"\n'
                    'password_file = "secrets/pw"\n')
    assert load_hub_config(path).dashboard.password_file == tmp_path / "secrets/pw"
