"""Cloud links: each turns routed readings into one cloud's MQTT messages.

Every link stores the readings routed to it in one shared :class:`~agent.outbox.Outbox`
(``[outbox]``, in the state directory) and sends them from there, so a
reading is on disk before any link sends it. The links open the outbox when
they start and release it when they stop; the last one to stop closes it.
The runtime (:func:`agent.runtime.build_links`) makes them from the config.
"""
