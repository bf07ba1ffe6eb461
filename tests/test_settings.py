"""Settings declared once: every bad value is one line naming where it came from, exit 2; the README table is generated."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest

from larpix_dqm.exporter import cli
from larpix_dqm.exporter.runtime.logs import JsonFormatter, LogfmtFormatter
from larpix_dqm.exporter.settings import ConfigError, Settings, load_config_file, option_table, parse_address

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from options_table import with_table  # noqa: E402


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """Run the larpix-dqm entry point in this process; return (exit status, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["larpix-dqm", *args])
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as exit_info:
        cli.run()
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--interval", "-5"], "--interval -5: must be more than 0"),
        (["--interval", "0"], "--interval 0: must be more than 0"),
        (["--interval", "nan"], "--interval nan: expected a finite number"),
        (["--window", "0"], "--window 0: must be more than 0"),
        (["--window", "0.5"], "--window 0.5: shorter than --interval 2"),
        (["--noisy-rate-hz", "-1"], "--noisy-rate-hz -1: must be more than 0"),
        (["--port", "99999"], "--port 99999: must be at most 65535"),
        (["--port", "70000"], "--port 70000: must be at most 65535"),
        (["--port", "-1"], "--port -1: must be at least 0"),
        (["--port", "nine"], "--port nine: expected a whole number"),
        (["--web.listen-address", ":99999"], "--web.listen-address ':99999': port '99999' is not a number"),
        (["--web.telemetry-path", "/-/ready"], "--web.telemetry-path '/-/ready': must start with '/' and not be"),
        (["--log.format", "xml"], "'xml' is not one of 'logfmt', 'json'"),
        (["--window-bins", "0"], "--window-bins 0: must be at least 1"),
    ],
)
def test_bad_values_stop_serve_with_one_line_naming_the_option(monkeypatch, capsys, tmp_path, args, message):
    code, _, err = run_cli(monkeypatch, capsys, "serve", "-i", str(tmp_path), *args)
    assert code == 2 and message in err and err.count("\n") == 1, err


def test_bad_values_in_the_environment_name_the_variable(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("LARPIX_DQM_INTERVAL", "0")
    code, _, err = run_cli(monkeypatch, capsys, "serve", "-i", str(tmp_path))
    assert code == 2 and "LARPIX_DQM_INTERVAL 0: must be more than 0" in err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("port: true\n", "line 1: key 'port': expected a number"),
        ("window: .nan\n", "line 1: key 'window': expected a finite number"),
        ("interval: 1\nwindow: sixty\n", "line 2: key 'window': expected a number"),
        ("log_level: loud\n", "line 1: key 'log_level': expected one of debug, info, warn, error"),
        ("per_pixel: 1\n", "line 1: key 'per_pixel': expected true or false"),
        ("intervall: 1\n", "line 1: unknown key 'intervall'"),
    ],
)
def test_bad_config_file_values_name_file_line_and_key(monkeypatch, capsys, tmp_path, text, message):
    config = tmp_path / "dqm.yaml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config_file(str(config))
    code, _, err = run_cli(monkeypatch, capsys, "serve", "-i", str(tmp_path), "--config", str(config))
    assert code == 2 and f"config file {config} {message}" in err and err.count("\n") == 1


def test_cross_checks_apply_to_values_from_the_file_too(monkeypatch, capsys, tmp_path):
    config = tmp_path / "dqm.yaml"
    config.write_text("interval: 5\nwindow: 4\n")
    code, _, err = run_cli(monkeypatch, capsys, "serve", "-i", str(tmp_path), "--config", str(config))
    assert code == 2 and "--window 4: shorter than --interval 5" in err


def test_settings_made_in_python_are_checked_the_same_way():
    with pytest.raises(ConfigError, match="--interval 0: must be more than 0"):
        Settings(interval=0)
    with pytest.raises(ConfigError, match="--port True: expected a number"):
        Settings(port=True)
    assert Settings(listen_address="127.0.0.1").listen_address == ["127.0.0.1"]  # one address as a text


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        (":9100", ("0.0.0.0", 9100)),
        ("127.0.0.1", ("127.0.0.1", 9767)),
        ("127.0.0.1:80", ("127.0.0.1", 80)),
        ("[::1]:9100", ("::1", 9100)),
        ("[::1]", ("::1", 9767)),
        ("localhost:0", ("localhost", 0)),
    ],
)
def test_listen_addresses(address, expected):
    assert parse_address(address, 9767) == expected


def test_command_line_wins_over_environment_wins_over_file(tmp_path, monkeypatch):
    config = tmp_path / "dqm.yaml"
    config.write_text("interval: 3\nwindow: 30\nnoisy_rate_hz: 7\n")
    from larpix_dqm.exporter.settings import build_settings

    settings = build_settings(str(config), {"window": 40.0})
    assert (settings.interval, settings.window, settings.noisy_rate_hz) == (3.0, 40.0, 7.0)


def test_readme_option_table_is_the_generated_one():
    readme = (ROOT / "README.md").read_text()
    assert option_table() in readme
    assert with_table(readme) == readme, "run: python scripts/options_table.py"


def test_help_lists_choices_defaults_and_environment(monkeypatch, capsys):
    code, out, _ = run_cli(monkeypatch, capsys, "serve", "--help")
    assert code == 0
    for text in (
        "<logfmt|json>",
        "<debug|info|warn|error|warning>",
        "[default: 9767]",
        "LARPIX_DQM_PORT",
        "--web.listen-address",
    ):
        assert text in out, text
    code, out, _ = run_cli(monkeypatch, capsys, "channels", "--help")
    assert code == 0 and "[channels]" in out and "<json|csv|daq>" in out  # plain text: no markup eats brackets
    code, out, _ = run_cli(monkeypatch, capsys, "--help")
    assert code == 0 and "--install-completion" in out


def test_cli_error_paths_are_one_line(monkeypatch, capsys, tmp_path):
    not_hdf5 = tmp_path / "notes.h5"
    not_hdf5.write_text("not HDF5\n")
    code, _, err = run_cli(monkeypatch, capsys, "channels", str(not_hdf5), "--geometry", "/nope.yaml")
    assert code == 2 and "/nope.yaml" in err and err.count("\n") == 1
    code, out, err = run_cli(monkeypatch, capsys, "channels", str(not_hdf5))
    assert code == 2 and str(not_hdf5) in err and out == ""
    code, _, err = run_cli(monkeypatch, capsys, "demo", "--format", "bogus")
    assert code == 2 and "'bogus' is not one of 'raw', 'packets'" in err and err.count("\n") == 1
    code, _, err = run_cli(monkeypatch, capsys, "demo", "--port", "70000")
    assert code == 2 and "--port 70000: must be at most 65535" in err
    code, _, err = run_cli(monkeypatch, capsys)
    assert code == 2 and "Commands" in err


def test_demo_removes_its_directory(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)
    code, _, err = run_cli(monkeypatch, capsys, "demo", "--port", "70000")  # fails after making its directory
    assert code == 2 and list(tmp_path.iterdir()) == []


def test_log_lines_are_logfmt_or_json():
    record = logging.LogRecord("larpix_dqm.exporter.x", logging.WARNING, __file__, 1, 'file "%s" gone', ("a b",), None)
    line = LogfmtFormatter().format(record)
    assert line.startswith("ts=") and ' level=warn logger=larpix_dqm.exporter.x msg="file \\"a b\\" gone"' in line
    fields = json.loads(JsonFormatter().format(record))
    assert fields["level"] == "warn" and fields["msg"] == 'file "a b" gone' and fields["ts"].endswith("Z")


@pytest.mark.parametrize("given", ["flag", "variable", "key"])
def test_a_renamed_settings_former_flag_variable_and_key_still_set_it(monkeypatch, capsys, tmp_path, given):
    args = ["serve", "-i", str(tmp_path)]
    if given == "flag":
        args += ["--state-file", "/proc/x/state.npz"]
    elif given == "variable":
        monkeypatch.setenv("LARPIX_DQM_STATE_FILE", "/proc/x/state.npz")
    else:
        (tmp_path / "dqm.yaml").write_text("state_file: /proc/x/state.npz\n")
        args += ["--config", str(tmp_path / "dqm.yaml")]
    code, _, err = run_cli(monkeypatch, capsys, *args)
    assert code == 2 and err.startswith("larpix-dqm: --checkpoint /proc/x") and err.count("\n") == 1, err


def test_a_config_file_giving_a_setting_twice_is_an_error(tmp_path):
    config = tmp_path / "dqm.yaml"
    config.write_text("checkpoint: a.npz\nstate_file: b.npz\n")
    with pytest.raises(ConfigError, match=r"line 2: key 'state_file': checkpoint is given twice"):
        load_config_file(str(config))
    config.write_text("state_file: b.npz\n")
    assert load_config_file(str(config)) == {"checkpoint": "b.npz"}
