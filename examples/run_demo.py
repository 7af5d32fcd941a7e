"""The demo behind ``./dev demo``: the real agent, simulated hardware, a
private local broker, and a stand-in for Blynk.Cloud that prints what arrives
and switches the pump on and off.

Run from the repository root (``./dev demo`` does). ``--seconds 0`` runs
until Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.broker import Broker  # noqa: E402 - after the path set-up
from tests.support.cloud import CloudClient, Message  # noqa: E402


def show(message: Message) -> None:
    """Print one message the agent sent to the 'cloud', readably."""
    payload = message.payload.decode("utf-8", "replace").replace("\x00", "\\0")
    print(f"  cloud <- {message.topic:34} {payload[:110]}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("DEMO_SECONDS", 20)))
    args = parser.parse_args()

    with Broker() as broker:
        print(f"demo: private mosquitto on {broker.url('mqtt')} (TLS, WS and WSS listeners too)")
        cloud = CloudClient(broker)
        seen = 0
        lock = threading.Lock()

        def follow() -> None:
            nonlocal seen
            while not stop.is_set():
                messages = cloud.messages
                with lock:
                    for m in messages[seen:]:
                        if not m.topic.startswith("downlink/"):  # the cloud's own commands, printed as sent
                            show(m)
                    seen = len(messages)
                time.sleep(0.1)

        stop = threading.Event()
        cloud.subscribe("#")
        printer = threading.Thread(target=follow, daemon=True)
        printer.start()
        # a fresh state dir per run: an outbox left by the last demo would replay its readings
        state = tempfile.mkdtemp(prefix="edge-agent-demo-")
        env = dict(os.environ)
        env.update(
            EDGE_AGENT_BLYNK__SERVER=broker.url("mqtt"),
            EDGE_AGENT_BLYNK__TOKEN=broker.token,
            EDGE_AGENT_AGENT__STATE_DIR=state,
            PYTHONUNBUFFERED="1",
            MALLOC_ARENA_MAX="2",  # as the systemd unit sets it (docs/performance.md)
        )
        config = ROOT / "examples" / "demo.toml"
        print(f"demo: edge-agent run --config {config.relative_to(ROOT)} (Ctrl-C stops)")
        agent = subprocess.Popen([sys.executable, "-m", "agent", "run", "--config", str(config)], env=env, cwd=ROOT)
        try:
            cloud.expect("info/mcu", timeout=20)
            start = time.monotonic()
            commands = [(4, "1"), (9, "0"), (12, "maybe")]
            while args.seconds <= 0 or time.monotonic() - start < args.seconds:
                elapsed = time.monotonic() - start
                while commands and elapsed >= commands[0][0]:
                    _, value = commands.pop(0)
                    print(f"  cloud -> downlink/ds/Pump                 {value}   (the app's switch)", flush=True)
                    cloud.publish("downlink/ds/Pump", value, qos=1)
                if agent.poll() is not None:
                    print(f"demo: the agent exited with {agent.returncode}")
                    return 1
                time.sleep(0.2)
        except KeyboardInterrupt:
            pass
        finally:
            if agent.poll() is None:
                agent.send_signal(signal.SIGTERM)
                agent.wait(timeout=15)
            stop.set()
            printer.join(timeout=1)
            cloud.close()
            shutil.rmtree(state, ignore_errors=True)
        print(f"demo: the agent stopped with exit code {agent.returncode} (0 = clean shutdown, pump off)")
        return 0 if agent.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
