"""The dashboard in a real browser (issue 12.5), driven step by step by tests/it/dashboard.rs.

    dashboard.py URL TOKEN ROOM ARTIFACTS_DIR AXE_JS

Headless Debian Chromium through chromedriver (no browser download). Talks to the Rust test
over stdout/stdin, one word a line: it prints `ready` once the room's tile reads "ready",
waits for `injected` (the test broke a transmitter battery in the simulator), then sees the
tile turn "not ready" by the live updates alone, acknowledges the alert by clicking, prints
`acknowledged`, saves screenshots at 1280x800 and 390x844, runs axe-core on the page at both
sizes (and on the device page and the logbook) and prints `done`. Any failure is printed to stderr and exits 1. Never sleeps: every
wait is a WebDriverWait on a condition.
"""

import json
import os
import sys
import tempfile

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = os.environ.get("AVWARDEN_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("AVWARDEN_CHROMEDRIVER", "/usr/bin/chromedriver")
WAIT_S = 60


def tell(word):
    print(word, flush=True)


def expect(word):
    line = sys.stdin.readline().strip()
    if line != word:
        raise SystemExit(f"expected {word!r} from the test, got {line!r}")


def browser(profile):
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    # Without the background-networking flags Chromium keeps reaching for the network and
    # misbehaves on a closed one.
    for flag in [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--window-size=1280,800",
    ]:
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)


def viewport(driver, width, height, mobile):
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile},
    )


def tile_state(driver, room):
    try:
        return driver.find_element(By.CSS_SELECTOR, f"#room-{room} .state").text.strip().lower()
    except StaleElementReferenceException:
        return ""


def axe(driver, source, label):
    driver.execute_script(source)
    driver.set_script_timeout(WAIT_S)
    result = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "axe.run(document).then(r => done(r.violations)).catch(e => done([{id: 'axe-error', impact: 'critical', help: String(e), nodes: []}]));"
    )
    bad = [v for v in result if v.get("impact") in ("serious", "critical")]
    for v in bad:
        nodes = [n.get("target") for n in v.get("nodes", [])][:5]
        print(
            f"axe ({label}): {v['impact']} {v['id']}: {v.get('help')} at {json.dumps(nodes)}",
            file=sys.stderr,
        )
    return bad


def main():
    url, token, room, artifacts, axe_path = sys.argv[1:6]
    os.makedirs(artifacts, exist_ok=True)
    with open(axe_path, encoding="utf-8") as f:
        axe_source = f.read()
    with tempfile.TemporaryDirectory() as profile:
        driver = browser(profile)
        try:
            wait = WebDriverWait(driver, WAIT_S)
            viewport(driver, 1280, 800, False)
            driver.get(url + "/")
            # No session yet: the board sends the browser to sign in.
            wait.until(lambda d: d.current_url.endswith("/login"))
            field = driver.find_element(By.ID, "token")
            field.send_keys(token)
            driver.find_element(By.CSS_SELECTOR, "#login button[type=submit]").click()
            wait.until(lambda d: d.find_elements(By.ID, f"room-{room}"))
            wait.until(lambda d: d.find_element(By.ID, "live-status").text.endswith("on"))
            wait.until(
                lambda d: tile_state(d, room).endswith("ready")
                and "not ready" not in tile_state(d, room)
            )
            tell("ready")
            expect("injected")
            # Only the live stream can change the tile: the page is not reloaded.
            wait.until(lambda d: "not ready" in tile_state(d, room))
            ack = wait.until(
                lambda d: d.find_elements(By.CSS_SELECTOR, "#alerts button.ack")
            )[0]
            ack.click()
            wait.until(
                lambda d: not d.find_elements(By.CSS_SELECTOR, "#alerts button.ack")
                and "acknowledged" in d.find_element(By.ID, "alerts").text
            )
            tell("acknowledged")
            violations = []
            for width, height, mobile in [(1280, 800, False), (390, 844, True)]:
                viewport(driver, width, height, mobile)
                wait.until(lambda d: d.execute_script("return window.innerWidth") == width)
                driver.save_screenshot(os.path.join(artifacts, f"dashboard-{width}x{height}.png"))
                violations += axe(driver, axe_source, f"{width}x{height}")
            # The device page, with its history section, at the desk's size.
            viewport(driver, 1280, 800, False)
            driver.get(url + "/devices/r101-mics")
            wait.until(lambda d: d.find_elements(By.ID, "device-state"))
            driver.save_screenshot(os.path.join(artifacts, "device-1280x800.png"))
            violations += axe(driver, axe_source, "device page")
            driver.get(url + "/logbook")
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "form.filters"))
            violations += axe(driver, axe_source, "logbook")
            if violations:
                raise SystemExit(f"{len(violations)} serious or critical accessibility violations")
            tell("done")
        finally:
            driver.quit()


if __name__ == "__main__":
    try:
        main()
    except SystemExit:
        raise
    except Exception as e:  # the test prints this and fails
        print(f"dashboard.py: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
