"""Pi Edge Agent: the core package (config, plugins, scheduler, links, OTA)."""

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

try:
    __version__ = version("pi-edge-agent")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

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
