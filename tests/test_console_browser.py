"""The web console in a real browser: Debian's headless chromium driven by
Selenium through Debian's chromedriver (both paths given: nothing is
downloaded).

One agent runs in its own thread with a simulated sensor, mock-pin relays, a
Blynk link on the harness broker and the console. The browser logs in, sees
the sensor's value change without a reload, switches the pump (the mock pin
moves, the echo arrives at the cloud test client), is refused by
``min_switch_interval`` and shows why, and works at a phone's width (no
sideways scrolling of the page, controls reachable).

With ``CONSOLE_SCREENSHOTS=DIR`` the overview is saved there at desktop and
phone width (how the screenshots in ``docs/`` are made).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.support.actuators import levels
from tests.support.agent_builder import make_agent
from tests.support.blynk import AgentThread, blynk_of, config_text
from tests.support.console import ADMIN_PASSWORD, base_url, cheap_hash, console_of
from tests.support.waiting import until_sync

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
DESKTOP = (1280, 900)
PHONE = (390, 844)


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    """Headless chromium (Debian's), closed at teardown."""
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.fail("chromium and chromium-driver are needed (./dev installs them with apt)", pytrace=False)
    options = Options()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--disable-extensions",
        "--no-first-run",
        f"--window-size={DESKTOP[0]},{DESKTOP[1]}",
        "--lang=en-GB",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def agent_config(tmp_path: Path, broker: Any) -> str:
    """Blynk on the harness broker (sensor air t/h, pump on pin 17 = Pump),
    a compressor with min_switch_interval, and the console."""
    text = config_text(tmp_path / "state", broker, sensor_interval=0.3)
    return (
        text.replace('name = "blynk-test"', 'name = "greenhouse"')
        + f"""
[[actuators]]
id = "compressor"
type = "relay"
pin = 23
min_switch_interval = 30
max_on = 3600

[[actuators]]
id = "fan"
type = "pwm"
pin = 18

[console]
type = "web"
port = 0
password_hash = "{cheap_hash(ADMIN_PASSWORD)}"
history_step = 2
"""
    )


def wait(driver: webdriver.Chrome, what: str, condition: Any, timeout: float = 15) -> Any:
    """Wait for ``condition(driver)`` in the page; the failure names ``what``."""
    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(condition, message=what)


def text_of(driver: webdriver.Chrome, css: str) -> str:
    return str(driver.find_element(By.CSS_SELECTOR, css).text)


def phone_width(driver: webdriver.Chrome) -> None:
    """Emulate a phone's viewport (390 x 844 CSS pixels, touch, mobile)."""
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": PHONE[0], "height": PHONE[1], "deviceScaleFactor": 2, "mobile": True},
    )


def screenshot(driver: webdriver.Chrome, name: str) -> None:
    """Save the page as DIR/name when CONSOLE_SCREENSHOTS=DIR is set."""
    target = os.environ.get("CONSOLE_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(target) / name))


def test_the_console_in_a_browser(tmp_path: Path, broker: Any, cloud: Any, browser: webdriver.Chrome) -> None:
    (tmp_path / "cfg").mkdir()
    text = agent_config(tmp_path, broker)
    thread = AgentThread(lambda: make_agent(tmp_path / "cfg", text))
    agent = thread.start()
    try:
        cloud.subscribe("#")
        url = base_url(agent)
        until_sync(lambda: blynk_of(agent).connected, 15, "blynk connected")

        # log in
        browser.get(url + "/")
        wait(browser, "the login form", lambda d: d.current_url.endswith("/login"))
        browser.find_element(By.ID, "password").send_keys(ADMIN_PASSWORD)
        browser.find_element(By.ID, "login").click()
        wait(browser, "the overview", lambda d: d.find_elements(By.ID, "sensors"))
        wait(browser, "the live stream", lambda d: text_of(d, "#live") == "live")

        # a simulated sensor's value changes on the page without a reload
        cell = 'tr[data-key="air.t"] .v'
        wait(browser, "a first value", lambda d: text_of(d, cell) not in ("", "—"))
        first = text_of(browser, cell)
        marker = browser.execute_script("window.__same_page = 1; return 1")
        wait(browser, "the value changed live", lambda d: text_of(d, cell) != first)
        assert browser.execute_script("return window.__same_page") == marker  # no reload happened
        assert text_of(browser, 'tr[data-key="air.t"] .badge') == "ok"

        # switch the pump: the mock pin moves, the echo reaches the cloud client, the page shows it
        clicked = time.monotonic()
        browser.find_element(By.ID, "on-pump").click()
        wait(browser, "the outcome", lambda d: text_of(d, "#actuator-pump .outcome").startswith("applied"))
        until_sync(lambda: levels(agent, 17)[-1] == 1, 5, "pin 17 high")
        cloud.expect("ds/Pump", timeout=10, predicate=lambda m: m.t >= clicked and m.payload == b"1")
        wait(browser, "the pump shown on", lambda d: text_of(d, "#actuator-pump .state .text") == "on")

        # a change within min_switch_interval is held, and the page says why
        browser.find_element(By.ID, "on-compressor").click()
        wait(browser, "compressor on", lambda d: text_of(d, "#actuator-compressor .outcome").startswith("applied"))
        browser.find_element(By.ID, "off-compressor").click()
        wait(
            browser,
            "the hold and its reason",
            lambda d: text_of(d, "#actuator-compressor .outcome").startswith("held: min_switch_interval:"),
        )
        assert levels(agent, 23)[-1] == 1
        wait(
            browser,
            "the rule in force shown",
            lambda d: "held by min_switch_interval" in text_of(d, "#actuator-compressor .in-force"),
        )
        wait(browser, "the command listed", lambda d: "min_switch_interval" in text_of(d, "#commands tbody"))
        # a bad value is refused with the safety manager's reason
        browser.find_element(By.ID, "value-fan").send_keys("banana")
        browser.find_element(By.ID, "set-fan").click()
        wait(browser, "the refusal", lambda d: text_of(d, "#actuator-fan .outcome").startswith("refused: "))

        # let the sparklines gather a few points for the picture
        link = console_of(agent)
        until_sync(lambda: len(link.model.series["air.t"].history.buckets) >= 4, 20, "history points")
        browser.refresh()
        wait(browser, "the live stream again", lambda d: text_of(d, "#live") == "live")
        screenshot(browser, "console-overview-desktop.png")

        # a phone's width: the page does not scroll sideways and the controls work
        phone_width(browser)
        browser.refresh()
        wait(browser, "the live stream at phone width", lambda d: text_of(d, "#live") == "live")
        width = browser.execute_script("return document.documentElement.scrollWidth")
        assert width <= PHONE[0], f"the page is {width} px wide at a {PHONE[0]} px viewport"
        off = browser.find_element(By.ID, "off-pump")
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", off)
        assert off.is_displayed() and off.size["height"] >= 36  # a finger can hit it
        off.click()
        wait(browser, "off at phone width", lambda d: text_of(d, "#actuator-pump .outcome").startswith("applied"))
        until_sync(lambda: levels(agent, 17)[-1] == 0, 5, "pin 17 low")
        wait(browser, "the pump shown off", lambda d: text_of(d, "#actuator-pump .state .text") == "off")
        browser.execute_script("window.scrollTo(0, 0)")
        screenshot(browser, "console-overview-phone.png")

        # live values are folded into the history's steps as the agent folds them: the
        # sparkline keeps one point per step (the whole window), not one per reading
        spark = 'tr[data-key="air.t"] polyline'
        readings_before = link.model.series["air.t"].readings
        until_sync(lambda: link.model.series["air.t"].readings >= readings_before + 15, 20, "15 more readings")
        drawn = browser.execute_script(f"return document.querySelector('{spark}').getAttribute('points')")
        buckets = len(link.model.series["air.t"].history.buckets)
        assert abs(len(drawn.split()) - buckets) <= 1, (drawn, buckets)

        # the links and updates pages render
        browser.get(url + "/links")
        wait(browser, "the links page", lambda d: "blynk" in text_of(d, "#links"))
        assert "connected" in text_of(browser, "#links")
        browser.get(url + "/updates")
        wait(browser, "the updates page", lambda d: d.find_elements(By.ID, "releases"))
    finally:
        thread.stop()
