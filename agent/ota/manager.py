"""Blynk.Air inside the running agent: take an offer, update, prove, commit.

:class:`OtaManager` receives ``downlink/ota/json`` payloads from the Blynk
link. An offer is refused, with one log line and (if ``[ota] event`` is set)
a Blynk event giving the reason, when :class:`~agent.ota.offer.OfferPolicy`
says so, when it failed recently, or while this release is on trial. A taken
offer runs as one task, ``ota:update``: download with bounded retries (Blynk
counts downloads), verify headers and the package's tag against the offer,
stage and swap (:mod:`agent.ota.install`), then ask the agent to exit with
the restart code. Only one update runs at a time; a repeat of the offer in
progress is ignored. Blocking work (HTTP, pip, file system) runs on a daemon
worker thread, never on the event loop.

When this release is on trial, the task ``ota:trial`` commits it once it is
ready, connected and then healthy for the trial's period, or rolls it back
when it cannot connect in time (:mod:`agent.ota.trial`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import shutil
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from agent import clock
from agent.aio import cancel_and_wait
from agent.config import BlynkSection, OtaSection
from agent.locks import InstanceLock, LockHeld
from agent.logtext import LogLimiter, clean
from agent.ota.trial import StartDecision, Trial, commit, load_state, roll_back, save_state
from agent.release_layout import current_release
from agent.status_file import age_text
from agent.version import version as running_version

if TYPE_CHECKING:
    # the download, package, install and signature code is imported when an
    # offer is taken, not by every agent that merely could take one
    from agent.ota.keys import KeyRing
    from agent.ota.offer import Offer, OfferPolicy
    from agent.ota.package import PackageInfo

log = logging.getLogger("agent.ota")

__all__ = ["OtaManager"]

T = TypeVar("T")
#: longest event description sent to Blynk
EVENT_TEXT = 250
#: outcomes remembered (an agent runs for months)
OUTCOMES = 50


async def in_thread(fn: Callable[..., T], *args: Any, name: str = "ota-worker") -> T:
    """Run a blocking call on a daemon thread (a stuck download or pip can
    never hold up the agent's shutdown) and await its result."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def target() -> None:
        try:
            result, error = fn(*args), None
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
            result, error = None, exc
        with contextlib.suppress(RuntimeError):  # the loop has closed: the agent stopped
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=target, name=name, daemon=True).start()
    return await future


class OtaManager:
    """Blynk.Air updates for one agent (see the module docstring)."""

    def __init__(
        self,
        settings: OtaSection,
        blynk: BlynkSection,
        root: Path,
        *,
        config_path: Path | None = None,
        restart: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.blynk = blynk
        self.root = Path(root)
        self.config_path = config_path
        self.restart = restart
        #: sends a Blynk event (code, description); set by the Blynk link's builder
        self.send_event: Callable[[str, str], bool] | None = None
        #: whether the cloud link is up (the trial needs it); set by the builder
        self.connected: Callable[[], bool] = lambda: False
        self.fw_type = blynk.firmware_type or blynk.template_id
        #: the offer being worked on
        self.active: Offer | None = None
        #: this release's trial, when it is on one
        self.trial: Trial | None = None
        #: the latest (outcome, detail) pairs, for status and tests
        self.outcomes: deque[tuple[str, str]] = deque(maxlen=OUTCOMES)
        self._task: asyncio.Task[None] | None = None
        self._trial_task: asyncio.Task[None] | None = None
        self._cancel = threading.Event()
        self._pending_report: str | None = None
        #: a newer offer that supersedes the active one (started when that one has stopped)
        self._next: Offer | None = None
        #: set when a newer offer arrives: ends a wait for a download retry at once
        self._superseded = asyncio.Event()
        #: the active update is being staged and installed (not interrupted)
        self._installing = False
        self._restarting = False
        #: lines an offer can trigger, rate-limited per kind (offers come from the network)
        self._peer_log = LogLimiter(log)

    # -- offers --------------------------------------------------------------
    # (agent.ota.offer, with the version order and the tag format, is imported
    # at the first offer, not by every running agent)

    @functools.cached_property
    def allowed_hosts(self) -> tuple[str, ...]:
        """Where a package may come from: ``[ota] allowed_hosts``, else the
        Blynk server's domain."""
        from agent.ota.offer import blynk_domain

        host = urlsplit(self.blynk.server).hostname or ""
        return tuple(self.settings.allowed_hosts) or (blynk_domain(host),)

    def policy(self) -> OfferPolicy:
        """The rules an offer is held to right now."""
        from agent.ota.offer import OfferPolicy

        s = self.settings
        return OfferPolicy(
            fw_type=self.fw_type,
            running=running_version(),
            allowed_hosts=self.allowed_hosts,
            allow_http=s.allow_http,
            allow_downgrade=s.allow_downgrade,
            max_size=s.max_size,
            reserve=s.reserve,
            space_dir=self.root,
        )

    def offer(self, payload: str | bytes) -> None:
        """One ``downlink/ota/json`` message (called on the loop; never raises)."""
        from agent.ota.offer import OfferError, parse_offer

        try:
            offer = parse_offer(payload)
        except OfferError as exc:
            self._refuse(None, str(exc))
            return
        if not self.settings.enabled:
            self._refuse(offer, "updates are disabled ([ota] enabled = false)")
            return
        if self.active is not None:
            if offer.key != self.active.key and (self._next is None or offer.key != self._next.key):
                self._supersede(offer)
                return
            if offer.key == self.active.key:
                self._peer_log.log(
                    "ota: offers ignored",
                    logging.INFO,
                    "ota: offer of %s ignored: that update is in progress",
                    clean(offer.version, 64),
                )
            else:
                self._peer_log.log(
                    "ota: offers ignored",
                    logging.WARNING,
                    "ota: offer of %s ignored: busy with the update to %s",
                    clean(offer.version, 64),
                    clean(self.active.version, 64),
                )
            return
        if self.trial is not None:
            self._refuse(offer, f"this release ({self.trial.version}) is on trial; updates wait until it is committed")
            return
        self._start(offer)

    def _start(self, offer: Offer) -> None:
        self.active = offer
        self._cancel.clear()
        self._superseded.clear()
        self._task = asyncio.get_running_loop().create_task(self._update(offer), name="ota:update")

    def _supersede(self, offer: Offer) -> None:
        """A newer offer while one is active: Blynk.Air's newest shipment is
        what counts. A download (or the wait for its retry) is abandoned at
        once and the new offer taken next; an install already under way
        finishes first (it cannot be cut safely)."""
        assert self.active is not None
        self._next = offer
        if self._installing:
            log.info(
                "ota: offer of %s waits: the update to %s is being installed",
                clean(offer.version, 64),
                clean(self.active.version, 64),
            )
            return
        log.info(
            "ota: offer of %s supersedes the update to %s; abandoning it",
            clean(offer.version, 64),
            clean(self.active.version, 64),
        )
        self._cancel.set()
        self._superseded.set()

    def _refusal(self, offer: Offer) -> str | None:
        """Why the offer is refused, or None (reads the disk: run it on a worker thread)."""
        if current_release(self.root) is None:
            return f"the agent is not installed as a release ({self.root / 'current'} is missing; see install.sh)"
        reason = self.policy().refusal(offer)
        if reason is not None:
            return reason
        failed = load_state(self.root).failed.get(offer.key)
        if failed is not None:
            wait = failed.get("at", 0) + self.settings.retry_after - clock.wall()
            if wait > 0:
                return (
                    f"this package failed {age_text(clock.wall() - failed.get('at', 0))} ago ({failed.get('reason')}); "
                    f"not tried again for {age_text(wait)}"
                )
        return None

    def _refuse(self, offer: Offer | None, reason: str) -> None:
        what = offer.describe() if offer is not None else "offer"
        self._peer_log.log(
            "ota: offers refused", logging.WARNING, "ota: %s refused: %s", clean(what, 300), clean(reason, 500)
        )
        self.outcomes.append(("refused", reason))
        self._event(f"update {offer.version if offer else ''} refused: {reason}".replace("  ", " "))

    def _event(self, text: str) -> None:
        code = self.settings.event
        if code and self.send_event is not None:
            self.send_event(code, text[:EVENT_TEXT])

    def check_url(self, url: str) -> str | None:
        """Why a download (or redirect) URL is refused, or None: https (http
        only when allowed) to an allowed host."""
        try:
            parts = urlsplit(url)
            scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
        except ValueError:
            return "not a URL"
        if scheme != "https" and not (scheme == "http" and self.settings.allow_http):
            return f"scheme {scheme!r} (only https{' and http' if self.settings.allow_http else ''})"
        from agent.ota.offer import host_allowed

        if not host_allowed(host, self.allowed_hosts):
            return f"host {host!r} is not allowed"
        return None

    # -- the update ----------------------------------------------------------

    async def _update(self, offer: Offer) -> None:
        try:
            reason = await in_thread(self._refusal, offer)
            if self._next is not None:
                return
            if reason is not None:
                self._refuse(offer, reason)
                return
            log.info("ota: offer of %s accepted", offer.describe())
            await self._run_update(offer)
        except asyncio.CancelledError:
            self._cancel.set()
            raise
        except Exception as exc:
            log.exception("ota: update to %s failed unexpectedly", offer.version)
            await self._failed(offer, f"{type(exc).__name__}: {exc}")
        finally:
            self.active = None
            upcoming, self._next = self._next, None
            if upcoming is not None and not self._restarting and self.trial is None:
                self._start(upcoming)

    async def _run_update(self, offer: Offer) -> None:
        from agent.ota.install import InstallError, TrialRules, stage_and_swap, staging_dir

        lock = InstanceLock(self.root / "ota" / "update.lock")
        try:
            (self.root / "ota").mkdir(parents=True, exist_ok=True)
            lock.acquire()
        except (LockHeld, OSError) as exc:
            self._refuse(offer, f"another update is running ({exc})")
            return
        work = staging_dir(self.root)
        try:
            await in_thread(lambda: shutil.rmtree(work, ignore_errors=True))
            package = await self._download(offer, work / f"{offer.version}.download")
            if package is None:
                return
            verified = await self._verify(offer, package)
            if verified is None:
                return
            ring, statement = verified
            rules = TrialRules(self.settings.max_starts, self.settings.trial_timeout, self.settings.healthy_period)
            if self._next is not None:
                return
            log.info("ota: %s: staging beside the running %s", offer.version, running_version())
            self._installing = True
            try:
                previous = await in_thread(
                    lambda: stage_and_swap(
                        package,
                        self.root,
                        config_path=self.config_path,
                        allow_index=self.settings.allow_index,
                        rules=rules,
                        reserve=self.settings.reserve,
                    )
                )
            except InstallError as exc:
                await self._failed(offer, str(exc))
                return
            finally:
                self._installing = False
            if statement is not None:
                await self._keep_keys(offer, ring, statement)
            self.outcomes.append(("swapped", offer.version))
            log.warning("ota: updated %s -> %s; restarting into the new release", previous, offer.version)
            self._event(f"updated {previous} -> {offer.version}; restarting (on trial)")
            if self.restart is not None:
                self._restarting = True
                self.restart()
        finally:
            await in_thread(lambda: shutil.rmtree(work, ignore_errors=True))
            lock.release()

    async def _download(self, offer: Offer, dest: Path) -> PackageInfo | None:
        """Download (bounded attempts) and verify; the package, or None after
        the failure was recorded."""
        from agent.ota.download import DownloadError, download, verify_headers
        from agent.ota.offer import safe_url
        from agent.ota.package import PackageError, open_package

        s = self.settings
        for attempt in range(1, s.attempts + 1):
            log.info(
                "ota: %s: downloading from %s (attempt %d of %d)",
                offer.version,
                safe_url(offer.url),
                attempt,
                s.attempts,
            )
            try:
                got = await in_thread(
                    lambda: download(
                        offer,
                        dest,
                        check_url=self.check_url,
                        ca_file=s.ca_file,
                        timeout=s.timeout,
                        total_timeout=s.download_timeout,
                        cancel=self._cancel,
                    )
                )
                verify_headers(got, offer)
                if "x-md5" not in got.headers:
                    log.info("ota: %s: the server sent no x-md5 header; SHA-256 checked", offer.version)
                log.info(
                    "ota: %s: downloaded %d bytes in %.1f s; size and SHA-256%s match the offer",
                    offer.version,
                    got.size,
                    got.seconds,
                    " and MD5" if "x-md5" in got.headers else "",
                )
                break
            except DownloadError as exc:
                if self._next is not None:
                    log.info("ota: %s: download abandoned (%s): a newer offer came", offer.version, exc)
                    return None
                if exc.retry and attempt < s.attempts:
                    log.warning(
                        "ota: %s: download failed: %s; trying again in %.0f s", offer.version, exc, s.retry_delay
                    )
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(s.retry_delay):
                            await self._superseded.wait()
                    if self._next is not None:
                        log.info("ota: %s: retry abandoned: a newer offer came", offer.version)
                        return None
                    continue
                await self._failed(offer, f"download: {exc}")
                return None
        try:
            package = await in_thread(open_package, dest)
        except PackageError as exc:
            await self._failed(offer, f"package: {exc}")
            return None
        tag = package.tag
        mismatch = [
            f"{k} {a!r} (offer {b!r})"
            for k, a, b in (
                ("mcu", tag.version, offer.version),
                ("fw-type", tag.fw_type, offer.type),
                ("build", tag.build, offer.build),
            )
            if a != b
        ]
        if mismatch:
            await self._failed(offer, "the package's tag does not match the offer: " + ", ".join(mismatch))
            return None
        log.info(
            "ota: %s: package checked: tag matches the offer, %d wheels intact", offer.version, len(package.wheels)
        )
        return package

    async def _verify(self, offer: Offer, package: PackageInfo) -> tuple[KeyRing | None, dict[str, Any] | None] | None:
        """With ``[ota] trusted_keys`` set: the package's signature checked
        (:mod:`agent.ota.keys`). Returns (key ring, verified statement), both
        None when signing is not required, or None after the refusal was
        recorded. Nothing of ``cryptography`` is imported without trusted keys."""
        s = self.settings
        if not s.trusted_keys:
            return None, None
        from agent.ota.keys import load_keyring
        from agent.ota.signing import SigningError

        try:
            ring = await in_thread(load_keyring, list(s.trusted_keys), list(s.revoked_keys), self.root)
            statement = await in_thread(ring.check, package)
        except SigningError as exc:
            await self._failed(offer, f"signature: {exc}")
            return None
        assert statement is not None  # trusted keys are set: check() verified or raised
        log.info("ota: %s: signature by trusted key %s verified", offer.version, statement["key_id"])
        return ring, statement

    async def _keep_keys(self, offer: Offer, ring: KeyRing | None, statement: dict[str, Any]) -> None:
        """Keep the keys an installed, verified package introduced (rotation)."""
        if ring is None:
            return
        from agent.ota.keys import remember_introduced
        from agent.ota.signing import SigningError

        try:
            new = await in_thread(remember_introduced, self.root, ring, statement, offer.version)
        except (OSError, SigningError) as exc:
            log.warning("ota: %s: the keys it introduces were not kept: %s", offer.version, exc)
            return
        if new:
            log.warning(
                "ota: %s introduces key %s (signed in by %s)",
                offer.version,
                ", ".join(k.key_id for k in new),
                statement["key_id"],
            )

    async def _failed(self, offer: Offer, reason: str) -> None:
        """An accepted offer that could not be installed: logged, remembered
        (not retried for ``retry_after``), reported; the running release is
        as it was."""
        log.error("ota: update to %s failed: %s; staying on %s", offer.version, reason, running_version())
        self.outcomes.append(("failed", reason))
        self._event(f"update {offer.version} failed: {reason}")

        def remember() -> None:
            state = load_state(self.root)
            state.failed[offer.key] = {"at": clock.wall(), "reason": reason[:300]}
            state.record(offer.version, "failed", reason[:300])
            save_state(self.root, state)

        try:
            await in_thread(remember)
        except OSError as exc:
            log.warning("ota: could not record the failure: %s", exc)

    # -- trial ---------------------------------------------------------------

    def begin(self, decision: StartDecision, ready: Callable[[], bool]) -> None:
        """After the agent started: watch this release's trial, or report the
        rollback that brought it back."""
        if decision.trial is not None:
            self.trial = decision.trial
            self._trial_task = asyncio.get_running_loop().create_task(
                self._watch_trial(decision.trial, ready), name="ota:trial"
            )
        elif decision.rolled_back is not None:
            t = decision.rolled_back
            self._pending_report = f"update {t.version} rolled back to {running_version()}: {t.reason}"
            self._trial_task = asyncio.get_running_loop().create_task(self._report_rollback(), name="ota:report")

    async def _report_rollback(self) -> None:
        while not self.connected():  # noqa: ASYNC110 - the link offers no event to wait on
            await asyncio.sleep(0.2)
        if self._pending_report:
            self._event(self._pending_report)
            self._pending_report = None

    async def _watch_trial(self, trial: Trial, ready: Callable[[], bool]) -> None:
        began = clock.monotonic()
        deadline = began + trial.trial_timeout
        while not (ready() and self.connected()):
            if clock.monotonic() >= deadline:
                await self._fail_trial(trial, f"not ready and connected within {trial.trial_timeout:.0f} s")
                return
            await asyncio.sleep(0.1)
        log.info(
            "ota: %s: ready and connected after %.1f s; committing after %.0f s healthy",
            trial.version,
            clock.monotonic() - began,
            trial.healthy_period,
        )
        await asyncio.sleep(trial.healthy_period)
        if await in_thread(commit, self.root, trial.version):
            self.trial = None
            self.outcomes.append(("committed", trial.version))
            self._event(f"update {trial.version} committed")

    async def _fail_trial(self, trial: Trial, reason: str) -> None:
        self.outcomes.append(("trial_failed", reason))
        if await in_thread(roll_back, self.root, reason):
            self.trial = None
            if self.restart is not None:
                self.restart()

    # -- stop ----------------------------------------------------------------

    async def stop(self) -> None:
        """Cancel an update in progress (a download stops at its next chunk;
        a build that already runs finishes in its thread or dies with the
        process, which leaves ``current`` as it was) and the trial watch."""
        self._cancel.set()
        for task in (self._task, self._trial_task):
            if task is not None:
                await cancel_and_wait(task)
        self._task = self._trial_task = None
        self._peer_log.flush()
