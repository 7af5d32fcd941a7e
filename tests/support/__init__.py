"""Test harness of the Pi Edge Agent.

* :mod:`tests.support.broker` - :class:`Broker`, a private mosquitto (plain, TLS,
  ws and wss listeners, password auth, throw-away CA) per session or per test.
* :mod:`tests.support.cloud` - :class:`CloudClient`, the "cloud" MQTT client
  that records what it receives (usable from sync and async tests).
* :mod:`tests.support.fixtures` - the pytest fixtures (``broker``,
  ``fresh_broker``, ``cloud``, ``make_cloud``, ``mock_pins``, ``fake_smbus``).
* The fake SMBus itself lives in :mod:`agent.sim.i2c` (the agent's simulated
  hardware mode uses it too).
"""

from .broker import Broker, BrokerError, ConnectionEvent, free_port
from .cloud import CloudClient, Message, topic_matches

__all__ = ["Broker", "BrokerError", "CloudClient", "ConnectionEvent", "Message", "free_port", "topic_matches"]
