"""Blynk.Air updates that cannot brick the device.

* :mod:`agent.ota.tag`, :mod:`agent.ota.versions`, :mod:`agent.ota.package`:
  the package a user uploads (the agent's wheel, optionally its dependencies,
  and the Blynk tag), built by ``edge-agent ota pack``, read back by
  ``edge-agent ota inspect`` and checked by the device before it installs.
* :mod:`agent.ota.offer`: is an offer from ``downlink/ota/json`` one to take?
* :mod:`agent.ota.download`: the streaming HTTPS download and its checks.
* :mod:`agent.ota.install`: stage a new release beside the running one, check
  it, flip ``current`` with one rename.
* :mod:`agent.ota.trial`: a new release is on trial until it has proved
  itself; one that does not is rolled back on its next start.
* :mod:`agent.ota.manager`: all of it inside the running agent.
"""
