#!/usr/bin/env python3
"""Drives agentline's /phone page in headless Chromium (selenium +
chromium-driver) with a fake microphone playing a WAV, for
tests/webrtc_browser.rs.

1. Opens /phone without a token: the page must show its 401 message.
2. Signs in with the token, picks the route, presses Call.
3. Lets the call run, optionally waits for a transcript line, presses the
   keypad (RTCDTMFSender) and waits until the server reports the digits
   (the page reads them from GET /calls/{id}/events).
4. Saves a screenshot, hangs up, prints the page's measurements as JSON.

Nothing leaves the machine: the resolver maps every host but 127.0.0.1 to
NOTFOUND (shared/TESTING.md).
"""

import argparse
import json
import sys
import tempfile
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait


def state(driver):
    return driver.execute_script("return JSON.parse(JSON.stringify(window.phone || null));")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True, help="http://127.0.0.1:PORT")
    ap.add_argument("--token", default="")
    ap.add_argument("--route", default="echo")
    ap.add_argument("--wav", required=True, help="the fake microphone")
    ap.add_argument("--screenshot", required=True)
    ap.add_argument("--talk-s", type=float, default=6.0)
    ap.add_argument("--digits", default="123")
    ap.add_argument("--expect-transcript", default="",
                    help="wait (20 s) for a transcript line containing this text")
    ap.add_argument("--play-recording", action="store_true",
                    help="after the call, play its recording from the recent calls")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--chromedriver", default="/usr/bin/chromedriver")
    args = ap.parse_args()

    opts = webdriver.ChromeOptions()
    opts.binary_location = args.chromium
    profile = tempfile.mkdtemp(prefix="agentline-chromium-")
    for flag in [
        "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
        "--disable-background-networking", "--disable-component-update",
        "--disable-sync", f"--user-data-dir={profile}",
        "--autoplay-policy=no-user-gesture-required",
        "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={args.wav}",
        "--disable-features=WebRtcHideLocalIpsWithMdns",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
        "--window-size=480,1100",
    ]:
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(args.chromedriver), options=opts)
    out = {"ok": False}
    try:
        # `raw=1`: no echo cancellation / noise suppression / AGC on the fake
        # microphone, so the recording can be compared with the WAV.
        driver.get(f"{args.url}/phone?silent=1&raw=1&route={args.route}")
        wait = WebDriverWait(driver, 20, poll_frequency=0.1)
        if args.token:
            # No token yet: the page says why it cannot go on.
            wait.until(lambda d: (state(d) or {}).get("unauthorized"))
            out["unauthorized_message"] = driver.find_element(By.ID, "error").text
            driver.find_element(By.ID, "token").send_keys(args.token)
            driver.find_element(By.ID, "signin-btn").click()
        wait.until(lambda d: len((state(d) or {}).get("routes") or []) > 0)
        out["routes"] = [r["dial"] for r in state(driver)["routes"]]
        Select(driver.find_element(By.ID, "route")).select_by_value(args.route)
        driver.find_element(By.ID, "call").click()
        wait.until(lambda d: (state(d) or {}).get("state") in ("in call", "ended", "idle")
                   and (state(d) or {}).get("state") != "idle"
                   or (state(d) or {}).get("error"))
        s = state(driver)
        if s.get("state") != "in call":
            out["error"] = s.get("error") or f"state {s.get('state')}"
            return out
        out["call_id"] = s["callId"]
        time.sleep(args.talk_s)
        if args.expect_transcript:
            try:
                WebDriverWait(driver, 20, poll_frequency=0.2).until(
                    lambda d: any(args.expect_transcript in (l.get("text") or "")
                                  for l in (state(d) or {}).get("transcript") or []))
            except Exception:  # reported below through the transcript
                pass
        for d in args.digits:
            driver.find_element(By.ID, f"key-{d}").click()
            time.sleep(0.5)
        try:
            if args.digits:
                WebDriverWait(driver, 10, poll_frequency=0.2).until(
                    lambda d: (state(d) or {}).get("heardDigits") == args.digits)
        except Exception:  # reported below through heardDigits
            pass
        time.sleep(1.2)  # one more getStats round for the screenshot
        driver.save_screenshot(args.screenshot)
        out["during_call"] = state(driver)
        driver.find_element(By.ID, "hangup").click()
        wait.until(lambda d: (state(d) or {}).get("state") == "ended")
        out["after"] = state(driver)
        if args.play_recording:
            # The recent calls list (from the call records) offers the
            # call's recording; the page fetches it with the token.
            def play_buttons(d):
                return d.find_elements(By.CSS_SELECTOR, "#cdrs button")
            for _ in range(20):
                driver.find_element(By.ID, "refresh-cdrs").click()
                time.sleep(0.5)
                if play_buttons(driver):
                    break
            out["recent_calls"] = driver.find_element(By.ID, "cdrs").text
            buttons = play_buttons(driver)
            if buttons:
                buttons[0].click()
                try:
                    WebDriverWait(driver, 10, poll_frequency=0.2).until(
                        lambda d: d.execute_script(
                            "const p = document.getElementById('player'); "
                            "return p.src.startsWith('blob:') && p.duration > 0;"))
                except Exception:  # reported through the duration below
                    pass
                out["recording_player_s"] = driver.execute_script(
                    "return document.getElementById('player').duration || 0;")
        out["ok"] = True
        return out
    finally:
        try:
            out["console"] = [e.get("message") for e in driver.get_log("browser")][-20:]
        except Exception:
            pass
        driver.quit()
        print(json.dumps(out))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
