"""A drop-in link for the tests: everything through plain files.

Readings routed to it are appended to ``readings.jsonl`` (one JSON object a
line); commands are lines ``ACTUATOR=VALUE`` appended to ``commands``; the
link counts as connected while the file ``online`` exists; every actuator
state it is shown is appended to ``states.jsonl``. It is written against the
link contract only, as a user's plugin file would be.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from agent.commands import StateReport
from agent.links.base import CommandSource, LinkOptions, StateSink
from agent.links.uplink import OutboxSink
from agent.outbox import Entry


class FileLinkOptions(LinkOptions):
    """Where the files are, and which actuators the commands file drives."""

    directory: Path
    actuators: list[str] = []
    poll: float = 0.05


class FileLink(OutboxSink, CommandSource, StateSink):
    """Readings out, commands in and states out, through files."""

    type = "filelink"
    Options = FileLinkOptions
    target_type = str
    options: FileLinkOptions

    async def connect(self) -> None:
        self._offset = 0
        self._watch = asyncio.create_task(self._follow(), name=f"{self.name}:follow")

    async def disconnect(self) -> None:
        self._watch.cancel()

    def ready(self) -> bool:
        return self.connected

    async def deliver(self, entries: list[Entry]) -> None:
        lines = "".join(json.dumps({"target": e.target, "ts_ms": e.ts_ms, "value": e.value}) + "\n" for e in entries)
        await asyncio.to_thread(self._append, "readings.jsonl", lines)

    def drives(self) -> set[str]:
        return set(self.options.actuators)

    def shows(self, actuator: str) -> bool:
        return actuator in self.options.actuators

    def show_state(self, report: StateReport) -> None:
        self._append("states.jsonl", json.dumps({"actuator": report.actuator, "value": report.value}) + "\n")

    def _append(self, name: str, text: str) -> None:
        with (self.options.directory / name).open("a") as fh:
            fh.write(text)

    async def _follow(self) -> None:
        directory = self.options.directory
        while True:
            online = await asyncio.to_thread((directory / "online").exists)
            if online != self.connected:
                self.set_connected(online)
                self.wake()
            lines = await asyncio.to_thread(self._new_lines, directory / "commands")
            for line in lines:
                actuator, _, value = line.partition("=")
                outcome: Any = self.command(actuator.strip(), value.strip())
                with (directory / "outcomes.jsonl").open("a") as fh:
                    fh.write(json.dumps({"line": line, "result": str(outcome.result) if outcome else None}) + "\n")
            await asyncio.sleep(self.options.poll)

    def _new_lines(self, path: Path) -> list[str]:
        try:
            with path.open() as fh:
                fh.seek(self._offset)
                text = fh.read()
        except FileNotFoundError:
            return []
        complete = text[: text.rfind("\n") + 1]
        self._offset += len(complete)
        return [line for line in complete.splitlines() if line.strip()]
