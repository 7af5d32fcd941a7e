"""Pi Edge Agent: the core package (config, plugins, scheduler, links, OTA)."""

from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path


def _installed_version() -> str:
    """The installed distribution's version: its metadata's ``Version:``
    header. Read as text: ``importlib.metadata.version()`` parses the whole
    file with the email parser, which costs a running agent about 0.15 MiB."""
    try:
        dist = distribution("pi-edge-agent")
        text = dist.read_text("METADATA") or dist.read_text("PKG-INFO") or ""  # a wheel's, or an egg-info's
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "0.0.0+unknown"
    for line in text.splitlines():
        if not line:  # the headers end at the first empty line
            break
        name, _, value = line.partition(":")
        if name.strip().lower() == "version" and value.strip():
            return value.strip()
    return "0.0.0+unknown"


__version__ = _installed_version()

#: Exit codes of ``edge-agent``. EXIT_RESTART asks the service manager for a
#: restart (a Blynk reboot request, an installed update); the unit lists it in
#: RestartForceExitStatus=.
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2
EXIT_RESTART = 75

#: The config file every subcommand reads unless told otherwise (here, not in
#: agent.config, so that naming it does not import pydantic).
DEFAULT_CONFIG = Path("/etc/edge-agent/agent.toml")
