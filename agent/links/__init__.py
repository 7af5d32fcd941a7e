"""Links: the agent's connections to the outside world, as plugins.

The contract is :mod:`agent.links.base`; :mod:`agent.links.uplink` is the
shared outbox-backed part of a reading sink. The built-in link types (Blynk,
ThingSpeak) register under the entry-point group ``edge_agent.links`` like a
third-party package would; the runtime (:mod:`agent.runtime`) builds every
configured instance and wires its roles.
"""
