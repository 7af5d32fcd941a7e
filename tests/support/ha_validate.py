"""Validate discovery payloads with Home Assistant's own MQTT schemas.

Runs in a Python that has ``homeassistant`` (and ``paho-mqtt``, the MQTT
integration's requirement) installed, NOT in the agent's environment:
``tests/test_mqtt_discovery.py`` starts it with the interpreter named in
``EDGE_TEST_HA_PYTHON`` and writes ``[{"component": .., "config": {..}}, ..]``
to its standard input. Each config goes through the ``DISCOVERY_SCHEMA`` of
``homeassistant.components.mqtt.<component>``, exactly as a discovery
message is validated by Home Assistant; a key the schema drops (an unknown
key) and a warning Home Assistant logs while validating (what a later
release will refuse) count as failures too. Prints one line per failure and a summary;
exits 1 if anything failed.
"""

from __future__ import annotations

import importlib
import json
import logging
import sys


def main() -> int:
    """Validate every payload read from stdin (templates are checked as Home
    Assistant checks them, which needs a HomeAssistant object on a loop)."""
    import asyncio

    return asyncio.run(_validate())


async def _validate() -> int:
    import tempfile

    import voluptuous as vol
    from homeassistant.const import __version__
    from homeassistant.core import HomeAssistant
    from homeassistant.helpers import frame

    hass = HomeAssistant(tempfile.mkdtemp(prefix="ha-validate-"))
    frame.async_setup(hass)
    # what Home Assistant only warns about now (e.g. a unit that does not fit
    # the device class "will stop working" in a later release) fails here
    warned: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = warned.append  # type: ignore[method-assign]
    logging.getLogger("homeassistant").addHandler(handler)
    items = json.load(sys.stdin)
    failed = 0
    for item in items:
        component, config = item["component"], item["config"]
        module = importlib.import_module(f"homeassistant.components.mqtt.{component}")
        warned.clear()
        try:
            validated = module.DISCOVERY_SCHEMA(dict(config))
        except vol.Invalid as exc:
            failed += 1
            print(f"INVALID {component} {config.get('unique_id')}: {exc}")
            continue
        if warned:
            failed += 1
            print(f"WARNED {component} {config.get('unique_id')}: {warned[0].getMessage()}")
            continue
        dropped = sorted(set(config) - set(validated))
        if dropped:
            failed += 1
            print(f"DROPPED {component} {config.get('unique_id')}: unknown keys {dropped}")
    print(f"Home Assistant {__version__}: {len(items) - failed} of {len(items)} discovery payloads valid")
    await hass.async_stop(force=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
