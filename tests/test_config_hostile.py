"""Config input from the hostile end: no secret ever appears in the output of
any config-error path, and pathological files end in exit 2 with one line,
never a traceback, for ``check``, ``run`` and ``read``."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.process import agent_env

#: Every planted secret carries this marker; it must never be printed.
MARK = "s3cr3t"
COMMANDS = (["check"], ["run"], ["read", "air"])

BASE = '[agent]\nplugin_dirs = []\nstate_dir = "state"\n'
SENSOR = '\n[[sensors]]\nid = "air"\ntype = "simulated"\n'
TS = (
    '\n[thingspeak]\nchannel_id = 1234567\nclient_id = "CLIENT"\nusername = "USER"\n'
    'password = "TSPASS-s3cr3t-file"\nwrite_api_key = "TSKEY-s3cr3t-file"\n'
)


def secret_cases(tmp: Path) -> dict[str, tuple[str, dict[str, str]]]:
    """name -> (config text, extra environment): each a way a config fails with secrets about."""
    creds = tmp / "creds"
    creds.mkdir()
    (creds / "blynk.token").write_text("TOKCRED-s3cr3t-cred\n")
    (creds / "thingspeak.password").write_text("TSPASS-s3cr3t-cred\n")
    badcreds = tmp / "badcreds"
    badcreds.mkdir()
    (badcreds / "blynk.token").write_bytes(b"\xff\xfeTOKBIN-s3cr3t-cred")
    blynk = '\n[blynk]\ntemplate_id = "TMPL6bQ2rX9c"\ntoken = "TOKFILE-s3cr3t-file"\n'
    return {
        "token-wrong-type": (BASE + '\n[blynk]\ntemplate_id = "T"\ntoken = ["TOKLIST-s3cr3t-file"]\n' + SENSOR, {}),
        "server-url-password-file": (
            BASE + blynk + 'server = "mqtts://dev:PWURL-s3cr3t-file@blynk.cloud:8883"\n' + SENSOR,
            {},
        ),
        "server-url-password-file-bad-scheme": (
            BASE + blynk + 'server = "https://dev:PWURL-s3cr3t-file@blynk.cloud"\n' + SENSOR,
            {},
        ),
        "server-url-password-env": (
            BASE + blynk + SENSOR,
            {"EDGE_AGENT_BLYNK__SERVER": "https://dev:PWURL-s3cr3t-env@blynk.cloud"},
        ),
        "blynk-json-malformed": (
            BASE + SENSOR,
            {"EDGE_AGENT_BLYNK": '{"token": "TOKJSON-s3cr3t-env", "template_id": '},
        ),
        "blynk-json-other-error": (
            BASE + SENSOR,
            {"EDGE_AGENT_BLYNK": '{"token": "TOKJSON-s3cr3t-env", "template_id": "T", "keepalive": 1}'},
        ),
        "token-env-other-error": (
            BASE + '\n[blynk]\ntemplate_id = "T"\nkeepalive = 1\n' + SENSOR,
            {"EDGE_AGENT_BLYNK__TOKEN": "TOKENV-s3cr3t-env"},
        ),
        "token-credential-other-error": (
            BASE + '\n[blynk]\ntemplate_id = "T"\nkeepalive = 1\n' + SENSOR,
            {"CREDENTIALS_DIRECTORY": str(creds)},
        ),
        "credential-not-utf8": (
            BASE + '\n[blynk]\ntemplate_id = "T"\n' + SENSOR,
            {"CREDENTIALS_DIRECTORY": str(badcreds)},
        ),
        "thingspeak-password-file": (BASE + TS + "keepalive = 1\n" + SENSOR, {}),
        "thingspeak-password-credential": (
            BASE + TS.replace('password = "TSPASS-s3cr3t-file"\n', "") + "keepalive = 1\n" + SENSOR,
            {"CREDENTIALS_DIRECTORY": str(creds)},
        ),
        "thingspeak-password-env-wrong-type": (
            BASE + TS.replace('password = "TSPASS-s3cr3t-file"\n', "") + SENSOR,
            {"EDGE_AGENT_THINGSPEAK": '{"password": ["TSPASS-s3cr3t-env"]}'},
        ),
        "thingspeak-write-key-wrong-type": (
            BASE + TS.replace('"TSKEY-s3cr3t-file"', '["TSKEY-s3cr3t-file"]') + SENSOR,
            {},
        ),
        "thingspeak-legacy-channel-key": (
            BASE
            + '\n[thingspeak]\nmode = "legacy"\nchannel_id = 1\nwrite_api_key = "TSKEY-s3cr3t-file"\n'
            + '[[thingspeak.channels]]\nid = 2\nwrite_api_key = ["TSKEY-s3cr3t-chan"]\n'
            + SENSOR,
            {},
        ),
        "api-url-password": (
            BASE + TS + 'api_url = "ftp://u:APIPW-s3cr3t-file@api.thingspeak.com"\n' + SENSOR,
            {},
        ),
        "toml-syntax-on-token-line": (BASE + '\n[blynk]\ntemplate_id = "T"\ntoken = "TOKSYN-s3cr3t-file\n', {}),
        "unknown-key-holding-secret": (BASE + '\n[blynk]\ntemplate_id = "T"\ntokn = "TOKTYPO-s3cr3t-file"\n', {}),
        "token-empty-env-with-file-token": (BASE + blynk + SENSOR, {"EDGE_AGENT_BLYNK__TOKEN": " "}),
    }


def run_all(jobs: dict[str, tuple[list[str], Path, dict[str, str]]]) -> dict[str, subprocess.CompletedProcess]:
    """Start every job, then wait for all (the machine is shared: no timing assumptions)."""
    procs = {}
    for name, (args, cwd, env) in jobs.items():
        procs[name] = subprocess.Popen(
            [sys.executable, "-m", "agent", *args],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    results = {}
    for name, proc in procs.items():
        try:
            out, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
        results[name] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return results


def test_no_secret_in_any_config_error_output(tmp_path):
    jobs = {}
    for name, (text, env) in secret_cases(tmp_path).items():
        workdir = tmp_path / name
        workdir.mkdir()
        (workdir / "agent.toml").write_text(text)
        for command in COMMANDS:
            jobs[f"{name} {command[0]}"] = ([*command, "--config", "agent.toml"], workdir, agent_env(**env))
    results = run_all(jobs)
    leaks = {k: r.stdout + r.stderr for k, r in results.items() if MARK in r.stdout + r.stderr}
    assert not leaks, leaks
    for key, result in results.items():
        printed = result.stdout + result.stderr
        assert result.returncode == 2, f"{key}: {printed}"
        assert "Traceback" not in printed, f"{key}: {printed}"
    print(
        f"config-error paths scanned for secrets: {len(results)} ({len(results) // len(COMMANDS)} cases x {len(COMMANDS)} commands)"
    )
    assert len(results) >= 50


def hostile_files(tmp: Path) -> dict[str, Path]:
    """name -> a --config argument that is no usable config at all."""
    deep_array = tmp / "deep-array.toml"
    deep_array.write_text("a = " + "[" * 3000 + "]" * 3000 + "\n")
    deep_table = tmp / "deep-table.toml"
    deep_table.write_text("a = " + "{b = " * 3000 + "1" + "}" * 3000 + "\n")
    directory = tmp / "dir.toml"
    directory.mkdir()
    huge = tmp / "huge.toml"
    huge.write_text(("# " + "x" * 1000 + "\n") * 3000)
    binary = tmp / "binary.toml"
    binary.write_bytes(bytes(range(256)) * 4)
    return {
        "deep-array": deep_array,
        "deep-table": deep_table,
        "dev-zero": Path("/dev/zero"),
        "directory": directory,
        "huge": huge,
        "binary": binary,
        "missing": tmp / "missing.toml",
    }


def test_pathological_input_ends_in_exit_2_with_one_line(tmp_path):
    jobs = {}
    for name, path in hostile_files(tmp_path).items():
        for command in COMMANDS:
            jobs[f"{name} {command[0]}"] = ([*command, "--config", str(path)], tmp_path, agent_env())
    deep_json = "[" * 3000 + "]" * 3000
    ok = tmp_path / "ok.toml"
    ok.write_text(BASE + SENSOR)
    for command in COMMANDS:
        jobs[f"deep-env-json {command[0]}"] = (
            [*command, "--config", str(ok)],
            tmp_path,
            agent_env(EDGE_AGENT_BLYNK__SYNC=deep_json),
        )
    results = run_all(jobs)
    for key, result in results.items():
        printed = (result.stdout + result.stderr).strip()
        assert result.returncode == 2, f"{key}: {printed[:2000]}"
        assert "Traceback" not in printed, f"{key}: {printed[:2000]}"
        lines = printed.splitlines()
        assert len(lines) == 1, f"{key}: {printed[:2000]}"
        assert re.match(r"^(\S+|environment \S+): ", lines[0]), lines[0]


pytestmark = pytest.mark.integration
