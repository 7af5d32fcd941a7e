"""The web console's HTTP side: login, CSRF, throttling, the JSON API,
/metrics (parsed with prometheus-client's own parser) and /healthz.

Each test runs a real agent (simulated sensor, mock-pin relays) whose
console listens on a free loopback port, and talks to it with a real HTTP
client. Nothing changes state without a session and its CSRF token.
"""

from __future__ import annotations

import asyncio
import base64
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.config import ConfigError
from tests.support.actuators import levels
from tests.support.blynk import run, running
from tests.support.console import (
    ADMIN_PASSWORD,
    VIEWER_PASSWORD,
    base_url,
    console_agent,
    console_config,
    console_of,
)
from tests.support.waiting import until

pytestmark = pytest.mark.integration


def basic(user: str, password: str) -> str:
    """An HTTP Basic Authorization header value."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def client() -> aiohttp.ClientSession:
    """An HTTP client that keeps cookies from an IP address (the console on 127.0.0.1)."""
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


async def login(http: aiohttp.ClientSession, url: str, user: str = "admin", password: str = ADMIN_PASSWORD) -> str:
    """Log in over the JSON form of /login; the session's CSRF token."""
    async with http.post(f"{url}/login", json={"user": user, "password": password}) as r:
        assert r.status == 200, await r.text()
        return str((await r.json())["csrf"])


async def get_json(http: aiohttp.ClientSession, url: str) -> Any:
    async with http.get(url) as r:
        assert r.status == 200, (url, r.status, await r.text())
        return await r.json()


def test_console_off_imports_no_web_modules(tmp_path: Path) -> None:
    """An agent without a web link never imports aiohttp or the console."""
    config = tmp_path / "agent.toml"
    config.write_text(
        textwrap.dedent(f"""
        [agent]
        plugin_dirs = []
        pin_factory = "mock"
        state_dir = "{tmp_path / "state"}"

        [[sensors]]
        id = "air"
        type = "simulated"
        interval = 0.05
        """)
    )
    script = textwrap.dedent(f"""
        import asyncio, sys
        from pathlib import Path
        from agent.config import load_config
        from agent.runtime import Agent

        async def main():
            agent = Agent(load_config(Path({str(config)!r})))
            await agent.start()
            await asyncio.wait_for(agent.first_reading.wait(), 10)
            await agent.stop()

        asyncio.run(main())
        web = sorted(m for m in sys.modules if m.split(".")[0] in ("aiohttp", "multidict", "yarl")
                     or m.startswith("agent.links.console"))
        print("WEB:", web)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "WEB: []" in out.stdout, out.stdout


def test_nothing_without_a_login_and_nothing_changes_without_csrf(tmp_path: Path) -> None:
    agent = console_agent(tmp_path)

    async def scenario() -> None:
        async with running(agent), client() as anon, client() as http:
            url = base_url(agent)
            # not logged in: pages go to the login form, the API says 401, commands do nothing
            async with anon.get(f"{url}/", allow_redirects=False) as r:
                assert r.status == 303 and r.headers["Location"] == "/login"
            for path in ("status", "sensors", "actuators", "commands", "events"):
                async with anon.get(f"{url}/api/v1/{path}") as r:
                    assert r.status == 401, path
            async with anon.post(f"{url}/api/v1/commands", json={"actuator": "pump", "value": 1}) as r:
                assert r.status == 401
            async with anon.post(f"{url}/api/v1/commands", data={"actuator": "pump", "value": "1"}) as r:
                assert r.status == 401

            # a wrong password is no session
            async with http.post(f"{url}/login", json={"user": "admin", "password": "guess"}) as r:
                assert r.status == 401
            async with http.get(f"{url}/api/v1/status") as r:
                assert r.status == 401

            # the session cookie is HttpOnly and SameSite=Strict
            async with http.post(f"{url}/login", json={"user": "admin", "password": ADMIN_PASSWORD}) as r:
                assert r.status == 200
                cookie = r.headers["Set-Cookie"]
                csrf = (await r.json())["csrf"]
            assert "HttpOnly" in cookie and "SameSite=Strict" in cookie, cookie

            # logged in, but no or a wrong CSRF token, or another site's origin: refused, pin untouched
            async with http.post(f"{url}/api/v1/commands", json={"actuator": "pump", "value": 1}) as r:
                assert r.status == 403
            async with http.post(
                f"{url}/api/v1/commands", json={"actuator": "pump", "value": 1}, headers={"X-CSRF-Token": "x" * 43}
            ) as r:
                assert r.status == 403
            async with http.post(
                f"{url}/api/v1/commands",
                json={"actuator": "pump", "value": 1},
                headers={"X-CSRF-Token": csrf, "Origin": "http://evil.example"},
            ) as r:
                assert r.status == 403
            async with http.post(f"{url}/logout") as r:
                assert r.status == 403  # logout is a state change too
            assert levels(agent, 17) == [0]

            # with the token: through the safety manager, the pin moves, the outcome comes back
            async with http.post(
                f"{url}/api/v1/commands", json={"actuator": "pump", "value": 1}, headers={"X-CSRF-Token": csrf}
            ) as r:
                assert r.status == 200
                outcome = await r.json()
            assert outcome["result"] == "applied" and outcome["reason"] == "", outcome
            await until(lambda: levels(agent, 17)[-1] == 1, 5, "pump on")
            # a plain form post (no script) works with the token in the form
            async with http.post(
                f"{url}/api/v1/commands",
                data={"actuator": "pump", "value": "0", "csrf": csrf},
                allow_redirects=False,
            ) as r:
                assert r.status == 303 and r.headers["Location"] == "/#actuator-pump"
            await until(lambda: levels(agent, 17)[-1] == 0, 5, "pump off")

            # log out: the cookie no longer opens anything
            async with http.post(f"{url}/logout", data={"csrf": csrf}, allow_redirects=False) as r:
                assert r.status == 303
            async with http.get(f"{url}/api/v1/status") as r:
                assert r.status == 401

    run(scenario())


def test_refusals_and_holds_come_back_with_their_reason(tmp_path: Path) -> None:
    agent = console_agent(tmp_path)

    async def scenario() -> None:
        async with running(agent), client() as http:
            url = base_url(agent)
            csrf = await login(http, url)

            async def command(actuator: str, value: Any) -> dict[str, Any]:
                async with http.post(
                    f"{url}/api/v1/commands",
                    json={"actuator": actuator, "value": value},
                    headers={"X-CSRF-Token": csrf},
                ) as r:
                    assert r.status == 200
                    return dict(await r.json())

            assert (await command("fill", 1))["result"] == "applied"
            refused = await command("drain", 1)
            assert refused["result"] == "refused" and refused["reason"] == "interlock: fill is on", refused
            assert levels(agent, 27) == [0]
            bad = await command("pump", "banana")
            assert bad["result"] == "refused" and bad["reason"], bad
            nobody = await command("no_such", 1)
            assert nobody["result"] == "refused" and "no such actuator" in nobody["reason"]

            assert (await command("compressor", 1))["result"] == "applied"
            held = await command("compressor", 0)
            assert held["result"] == "held" and held["reason"].startswith("min_switch_interval:"), held
            assert levels(agent, 23)[-1] == 1

            actuators = {a["id"]: a for a in await get_json(http, f"{url}/api/v1/actuators")}
            compressor = actuators["compressor"]
            assert compressor["held"] == "off" and compressor["text"] == "on", compressor
            assert any("min_switch_interval" in x for x in compressor["in_force"])
            assert actuators["pump"]["rules"]["max_on"] == 600
            recent = await get_json(http, f"{url}/api/v1/commands")
            assert [c["result"] for c in recent[:3]] == ["held", "applied", "refused"]

            # the read-only user sees everything and changes nothing
            async with client() as viewer:
                vcsrf = await login(viewer, url, "viewer", VIEWER_PASSWORD)
                assert len(await get_json(viewer, f"{url}/api/v1/actuators")) == 4
                async with viewer.post(
                    f"{url}/api/v1/commands", json={"actuator": "pump", "value": 1}, headers={"X-CSRF-Token": vcsrf}
                ) as r:
                    assert r.status == 403
                async with viewer.get(f"{url}/") as r:
                    page = await r.text()
                assert "Read-only user" in page and 'id="on-pump"' not in page
            assert levels(agent, 17) == [0]

    run(scenario())


def test_twenty_wrong_passwords_are_throttled(tmp_path: Path) -> None:
    agent = console_agent(tmp_path)

    async def scenario() -> None:
        async with running(agent), client() as http:
            url = base_url(agent)
            statuses = []
            for i in range(20):
                async with http.post(f"{url}/login", json={"user": "admin", "password": f"guess {i}"}) as r:
                    statuses.append(r.status)
                    if r.status == 429:
                        assert int(r.headers["Retry-After"]) >= 1
            assert statuses[:5] == [401] * 5, statuses
            assert statuses[5:] == [429] * 15, statuses
            # throttled means not even checked: the right password is refused too, for now
            async with http.post(f"{url}/login", json={"user": "admin", "password": ADMIN_PASSWORD}) as r:
                assert r.status == 429
            # and the form version says so on the page
            async with http.post(f"{url}/login", data={"user": "admin", "password": "x"}) as r:
                assert r.status == 429 and "Too many failed logins" in await r.text()
            server = console_of(agent)._server
            assert server.logins["wrong"] == 5 and server.logins["throttled"] == 17

    run(scenario())


def test_the_api_shows_sensors_links_and_status(tmp_path: Path) -> None:
    agent = console_agent(tmp_path, extra_console='actuators = ["pump", "compressor"]')

    async def scenario() -> None:
        async with running(agent), client() as http:
            url = base_url(agent)
            await login(http, url)

            async def temperature() -> dict[str, Any]:
                sensors = await get_json(http, f"{url}/api/v1/sensors")
                return next(s for s in sensors if s["key"] == "air.temperature")

            model = console_of(agent).model
            await until(lambda: len(model.series["air.temperature"].history.buckets) >= 2, 10, "two history points")
            t = await temperature()
            assert t["unit"] == "°C" and t["status"] == "ok" and isinstance(t["value"], float), t
            assert all(len(p) == 2 for p in t["history"])
            status = await get_json(http, f"{url}/api/v1/status")
            assert status["agent"] == "greenhouse" and status["sensors"]["quantities"] == 2
            assert status["actuators"] == 2  # only those the console is configured to show
            links = {ln["name"]: ln for ln in await get_json(http, f"{url}/api/v1/links")}
            assert links["console"]["connected"] is True and links["console"]["type"] == "web"
            async with http.get(f"{url}/api/v1/sensors?history=0") as r:
                assert "history" not in (await r.json())[0]

    run(scenario())


def test_metrics_parse_and_healthz_answers(tmp_path: Path) -> None:
    agent = console_agent(tmp_path)

    async def scenario() -> None:
        async with running(agent), client() as http:
            url = base_url(agent)
            await until(lambda: console_of(agent).model.series["air.temperature"].ts is not None, 10, "a reading")
            csrf = await login(http, url)
            async with http.post(
                f"{url}/api/v1/commands", json={"actuator": "pump", "value": 1}, headers={"X-CSRF-Token": csrf}
            ) as r:
                assert (await r.json())["result"] == "applied"
            async with http.post(
                f"{url}/api/v1/commands", json={"actuator": "drain", "value": "x"}, headers={"X-CSRF-Token": csrf}
            ) as r:
                assert (await r.json())["result"] == "refused"
            async with client() as prometheus, prometheus.get(f"{url}/metrics") as r:  # open by default
                assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
                text = await r.text()
            families = {f.name: f for f in text_string_to_metric_families(text)}
            reading = families["edge_agent_reading"]
            temps = [s for s in reading.samples if s.labels["quantity"] == "temperature"]
            assert temps and temps[0].labels == {"sensor": "air", "quantity": "temperature", "unit": "°C"}
            states = {s.labels["actuator"]: s.value for s in families["edge_agent_actuator_state"].samples}
            assert states["pump"] == 1.0 and states["drain"] == 0.0
            commands = {
                (s.labels["actuator"], s.labels["result"]): s.value
                for s in families["edge_agent_commands"].samples
                if s.name == "edge_agent_commands_total"
            }
            assert commands[("pump", "applied")] == 1 and commands[("drain", "refused")] == 1
            assert families["edge_agent_link_up"].samples[0].labels == {"link": "console", "type": "web"}
            assert families["edge_agent_sensor_read_errors"].type == "counter"
            async with http.get(f"{url}/healthz") as r:
                assert r.status == 200 and (await r.json())["status"] == "ok"

    run(scenario())


def test_metrics_behind_the_login_take_basic_credentials(tmp_path: Path) -> None:
    agent = console_agent(tmp_path, extra_console='metrics = "login"\nhealthz = "login"')

    async def scenario() -> None:
        async with running(agent), client() as http:
            url = base_url(agent)
            async with http.get(f"{url}/metrics") as r:
                assert r.status == 401 and "Basic" in r.headers["WWW-Authenticate"]
            async with http.get(f"{url}/healthz") as r:
                assert r.status == 401
            async with http.get(f"{url}/metrics", headers={"Authorization": basic("viewer", VIEWER_PASSWORD)}) as r:
                assert r.status == 200
                assert "edge_agent_info" in await r.text()

    run(scenario())


def test_console_passwd_sets_a_hash_that_logs_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import io
    import json

    from agent.cli import main

    text = console_config(tmp_path).replace("\npassword_hash", "\n# password_hash")
    (tmp_path / "cfg").mkdir()
    config = tmp_path / "cfg" / "agent.toml"
    config.write_text(text)
    monkeypatch.setattr(sys, "stdin", io.StringIO("a new long password\n"))
    assert main(["console", "passwd", "--stdin", "-c", str(config)]) == 0
    users = tmp_path / "state" / "console-users.json"
    stored = json.loads(users.read_text())
    assert stored["admin"].startswith("scrypt$16384$8$1$") and "a new long password" not in users.read_text()
    assert users.stat().st_mode & 0o777 == 0o600
    monkeypatch.setattr(sys, "stdin", io.StringIO("short\n"))
    assert main(["console", "passwd", "--stdin", "-c", str(config)]) == 1

    from agent.config import load_config
    from agent.runtime import Agent

    agent = Agent(load_config(config))

    async def scenario() -> None:
        async with running(agent), client() as http:
            await login(http, base_url(agent), "admin", "a new long password")

    run(scenario())


def test_live_updates_stream_readings_and_states(tmp_path: Path) -> None:
    agent = console_agent(tmp_path)

    async def scenario() -> None:
        async with running(agent), client() as http:
            url = base_url(agent)
            csrf = await login(http, url)
            async with http.get(f"{url}/api/v1/events") as stream:
                assert stream.status == 200 and stream.headers["Content-Type"] == "text/event-stream"
                seen: list[tuple[str, str]] = []
                event = ""

                async def next_events() -> None:
                    nonlocal event
                    line = (await stream.content.readline()).decode().rstrip("\n")
                    if line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("data: "):
                        seen.append((event, line[6:]))

                while not any(e == "reading" and "air.temperature" in d for e, d in seen):
                    await asyncio.wait_for(next_events(), 10)
                async with http.post(
                    f"{url}/api/v1/commands", json={"actuator": "pump", "value": 1}, headers={"X-CSRF-Token": csrf}
                ) as r:
                    assert (await r.json())["result"] == "applied"
                while not (
                    any(e == "state" and '"pump"' in d for e, d in seen) and any(e == "command" for e, _ in seen)
                ):
                    await asyncio.wait_for(next_events(), 10)
                assert len(console_of(agent).model.subscribers) == 1
            await until(lambda: not console_of(agent).model.subscribers, 5, "the stream forgotten")

    run(scenario())


def test_a_failing_sensor_shows_failing_with_its_reason(tmp_path: Path) -> None:
    extra = """
[[sensors]]
id = "soil"
type = "simulated"
interval = 0.1
fault = "raise"
quantities.moisture = { unit = "%" }
"""
    agent = console_agent(tmp_path, extra=extra)

    async def scenario() -> None:
        async with running(agent), client() as http:
            url = base_url(agent)
            await login(http, url)
            await until(lambda: agent.sensor_states()["soil"].value == "failing", 10, "soil failing")
            sensors = {s["key"]: s for s in await get_json(http, f"{url}/api/v1/sensors?history=0")}
            soil = sensors["soil.moisture"]
            assert soil["status"] == "failing" and "simulated fault" in soil["reason"], soil
            assert soil["unit"] == "%" and soil["value"] is None
            async with http.get(f"{url}/healthz") as r:
                assert (await r.json())["sensors_failing"] == ["soil"]
            async with http.get(f"{url}/") as r:
                page = await r.text()
            assert 'class="sensor status-failing" data-key="soil.moisture"' in page
            async with http.get(f"{url}/metrics") as r:
                families = {f.name: f for f in text_string_to_metric_families(await r.text())}
            errors = {s.labels["sensor"]: s.value for s in families["edge_agent_sensor_read_errors"].samples}
            assert errors["soil"] >= 1 and errors["air"] == 0

    run(scenario())


def test_tls_with_a_configured_certificate(tmp_path: Path) -> None:
    """HTTPS with the configured certificate; the session cookie is Secure."""
    import datetime
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    import ipaddress

    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "console.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "console.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    agent = console_agent(
        tmp_path, extra_console=f'tls_cert = "{tmp_path / "console.crt"}"\ntls_key = "{tmp_path / "console.key"}"'
    )
    context = ssl.create_default_context(cafile=str(tmp_path / "console.crt"))

    async def scenario() -> None:
        async with running(agent), client() as http:
            url = base_url(agent).replace("http://", "https://")
            async with http.post(f"{url}/login", json={"user": "admin", "password": ADMIN_PASSWORD}, ssl=context) as r:
                assert r.status == 200 and "Secure" in r.headers["Set-Cookie"]
            async with http.get(f"{url}/api/v1/status", ssl=context) as r:
                assert r.status == 200
            with pytest.raises(aiohttp.ClientError):
                async with http.get(base_url(agent) + "/healthz") as r:  # plain HTTP on the TLS port
                    await r.read()

    run(scenario())


def test_a_systemd_credential_sets_the_admin_hash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``LoadCredential=console.password_hash:...`` wins over the table's hash;
    a damaged one is a config error naming the credential, never its value."""
    from tests.support.console import cheap_hash

    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "console.password_hash").write_text(cheap_hash("from a credential") + "\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    agent = console_agent(tmp_path)

    async def scenario() -> None:
        async with running(agent), client() as http:
            url = base_url(agent)
            await login(http, url, "admin", "from a credential")
            async with http.post(f"{url}/login", json={"user": "admin", "password": ADMIN_PASSWORD}) as r:
                assert r.status == 401
            await login(http, url, "viewer", VIEWER_PASSWORD)

    run(scenario())
    (creds / "console.viewer_password_hash").write_text("not a hash")
    with pytest.raises(ConfigError) as caught:
        console_agent(tmp_path)
    text = "\n".join(caught.value.lines)
    assert "console.viewer_password_hash: not a scrypt hash" in text and "not a hash" not in text, text
