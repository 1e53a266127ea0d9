#!/usr/bin/env python3
"""Drives a lanshare dashboard in headless Chromium (selenium + chromedriver).

Run by tests/netns/ui.rs inside the network namespace of the node whose
page it opens (the page is at http://127.0.0.1:PORT/ there).

  dashboard.py fetcher --url URL --shots DIR --add-file PATH --big NAME
      The fetching node's page: peers, library (search, category filter,
      comments), a new file appearing live, fetch with progress, cancel,
      history; phone-sized and dark screenshots.
  dashboard.py holder --url URL --shots DIR --file NAME
      The holder's page: waits for the upload of NAME to show progress.

Prints `RESULT {json}` with what it measured; exits 0 when every check
held, 1 when one failed (with the reason), 77 when the browser cannot run.
"""

import argparse
import json
import os
import sys
import tempfile
import time

try:
    from selenium import webdriver
    from selenium.common.exceptions import (NoSuchElementException, StaleElementReferenceException,
                                            TimeoutException, WebDriverException)
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError as e:  # pragma: no cover
    print(f"SKIP selenium is not installed: {e}")
    sys.exit(77)

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
RESULTS = {}


class Failed(Exception):
    pass


def browser(width=1280, height=900):
    opts = webdriver.ChromeOptions()
    for flag in ("--headless --no-sandbox --disable-gpu --disable-quic --no-first-run "
                 "--disable-background-networking --disable-component-update --disable-sync "
                 "--disable-dev-shm-usage").split():
        opts.add_argument(flag)
    opts.add_argument("--user-data-dir=" + tempfile.mkdtemp(prefix="lanshare-ui-"))
    opts.binary_location = CHROMIUM
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        d = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    except WebDriverException as e:
        print(f"SKIP chromium cannot start here: {e.msg}")
        sys.exit(77)
    d.set_window_size(width, height)
    return d


def wait(d, what, cond, timeout=30.0):
    # The page redraws lists as events arrive: an element may go stale
    # between finding it and reading it; look again.
    ignored = (NoSuchElementException, StaleElementReferenceException)
    try:
        return WebDriverWait(d, timeout, poll_frequency=0.05, ignored_exceptions=ignored).until(cond)
    except TimeoutException as e:
        raise Failed(f"timed out after {timeout}s waiting for {what}") from e


def click(d, css, what):
    """Clicks what `css` finds; again if the list was redrawn meanwhile."""
    wait(d, what, lambda d: d.find_element(By.CSS_SELECTOR, css).click() or True, 10)


def shot(d, shots, name):
    os.makedirs(shots, exist_ok=True)
    d.save_screenshot(os.path.join(shots, name + ".png"))


def rows(d):
    return [tr.get_attribute("data-name") for tr in d.find_elements(By.CSS_SELECTOR, "#library-rows tr")]


def go(d, view):
    d.find_element(By.CSS_SELECTOR, f'#nav a[data-view="{view}"]').click()
    wait(d, f"the {view} view", lambda d: d.find_element(By.ID, "view-" + view).is_displayed(), 5)


def type_search(d, text):
    box = d.find_element(By.ID, "search")
    box.clear()
    if text:
        box.send_keys(text)
    else:  # clear() fires no input event
        d.execute_script("arguments[0].dispatchEvent(new Event('input'))", box)


def check_console(d):
    errors = [e["message"] for e in d.get_log("browser") if e["level"] == "SEVERE"]
    if errors:
        raise Failed(f"the page logged errors: {errors}")


def open_page(d, url, name):
    started = time.monotonic()
    d.get(url)
    wait(d, "the live event stream", lambda d: "on" in d.find_element(By.ID, "live").get_attribute("class"))
    wait(d, "the node's name", lambda d: d.find_element(By.ID, "me-name").text == name)
    RESULTS["page_ready_ms"] = round((time.monotonic() - started) * 1000)
    RESULTS["page_load_ms"] = d.execute_script(
        "const t = performance.getEntriesByType('navigation')[0]; return Math.round(t.loadEventEnd - t.startTime);")


def library_checks(d, shots, add_file):
    go(d, "peers")
    wait(d, "alpha online in peers", lambda d: "online" in d.find_element(By.CSS_SELECTOR, '#peers-rows tr[data-peer="alpha"]').text)
    shot(d, shots, "peers")
    go(d, "library")
    want = {"concert.mkv", "recordings/live-set.ogg", "notes.txt"}
    wait(d, f"the library to list {want}", lambda d: want <= set(rows(d)))
    cell = '#library-rows tr[data-name="recordings/live-set.ogg"] td.comment'
    comment = wait(d, "live-set.ogg's comment", lambda d: d.find_element(By.CSS_SELECTOR, cell).text, 5)
    if comment != "recorded live":
        raise Failed(f"live-set.ogg shows comment {comment!r}")
    shot(d, shots, "library")
    started = time.monotonic()
    type_search(d, "concert")
    wait(d, "the search to narrow the list", lambda d: rows(d) == ["concert.mkv"], 5)
    RESULTS["search_ms"] = round((time.monotonic() - started) * 1000)
    shot(d, shots, "library-search")
    type_search(d, "")
    wait(d, "the search to clear", lambda d: want <= set(rows(d)), 5)
    click(d, '#cats .chip[data-cat="audio"]', "the audio filter")
    wait(d, "the audio filter", lambda d: rows(d) == ["recordings/live-set.ogg"], 5)
    shot(d, shots, "library-audio")
    click(d, '#cats .chip[data-cat="all"]', "the all filter")
    wait(d, "all categories", lambda d: want <= set(rows(d)), 5)
    # A file added on the other node appears without a reload.
    with open(add_file, "w") as f:
        f.write("fresh content\n")
    started = time.monotonic()
    name = os.path.basename(add_file)
    wait(d, f"{name} to appear live", lambda d: name in rows(d), 20)
    RESULTS["new_file_seen_ms"] = round((time.monotonic() - started) * 1000)


def download_checks(d, shots, file, big):
    click(d, f'#library-rows tr[data-name="{file}"] button.fetch', f"fetch {file}")
    go(d, "transfers")
    card = f'#downloads .transfer[data-transfer]'

    def midway(d):
        for c in d.find_elements(By.CSS_SELECTOR, card):
            if file in c.text and "downloading" in c.text:
                pct = float(c.find_element(By.CSS_SELECTOR, ".pct").text.rstrip("%"))
                if 2 <= pct <= 90:
                    return pct
        return None
    RESULTS["download_progress_seen_pct"] = wait(d, f"{file} downloading with progress", midway, 60)
    text = wait(d, "the download's card", lambda d: d.find_element(By.CSS_SELECTOR, card).text, 5)
    if "/s" not in text or "ETA" not in text or "alpha" not in text:
        raise Failed(f"the download shows no rate, ETA or peer: {text!r}")
    shot(d, shots, "transfers-progress")
    wait(d, f"{file} done", lambda d: any(file in c.text and "done" in c.text for c in d.find_elements(By.CSS_SELECTOR, card)), 120)
    shot(d, shots, "transfers-done")
    # Cancel: fetch another file, cancel it from its card.
    go(d, "library")
    wait(d, f"{big} in the library", lambda d: big in rows(d))
    click(d, f'#library-rows tr[data-name="{big}"] button.fetch', f"fetch {big}")
    go(d, "transfers")
    wait(d, f"{big} downloading", lambda d: any(big in c.text and "downloading" in c.text for c in d.find_elements(By.CSS_SELECTOR, card)), 60)
    click(d, f'#downloads .transfer[data-transfer] button.cancel', f"cancel {big}")
    wait(d, f"{big} cancelled", lambda d: any(big in c.text and "cancelled" in c.text for c in d.find_elements(By.CSS_SELECTOR, card)), 20)
    shot(d, shots, "transfers-cancelled")


def history_checks(d, shots, file):
    go(d, "history")
    wait(d, f"{file} in the history", lambda d: file in d.find_element(By.ID, "history-rows").text, 10)
    box = d.find_element(By.ID, "history-q")
    box.send_keys("no-such-file")
    wait(d, "the history filter", lambda d: not d.find_elements(By.CSS_SELECTOR, "#history-rows tr"), 5)
    box.clear()
    d.execute_script("arguments[0].dispatchEvent(new Event('input'))", box)
    wait(d, "the history back", lambda d: file in d.find_element(By.ID, "history-rows").text, 5)
    shot(d, shots, "history")
    go(d, "shares")
    shot(d, shots, "shares")
    go(d, "overview")
    shot(d, shots, "overview")


def looks(d, shots):
    """Phone-sized and dark screenshots of the same page."""
    d.set_window_size(390, 844)
    for view in ("overview", "library", "transfers"):
        go(d, view)
        time.sleep(0.3)
        shot(d, shots, "phone-" + view)
    width = d.execute_script("return document.documentElement.scrollWidth")
    if width > 400:
        raise Failed(f"the page is {width}px wide in a 390px window")
    d.set_window_size(1280, 900)
    d.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": [{"name": "prefers-color-scheme", "value": "dark"}]})
    for view in ("overview", "library", "transfers"):
        go(d, view)
        time.sleep(0.3)
        shot(d, shots, "dark-" + view)


def fetcher(a):
    d = browser()
    try:
        open_page(d, a.url, "beta")
        library_checks(d, a.shots, a.add_file)
        download_checks(d, a.shots, a.file, a.big)
        history_checks(d, a.shots, a.file)
        looks(d, a.shots)
        check_console(d)
    finally:
        d.quit()


def holder(a):
    d = browser()
    try:
        open_page(d, a.url, "alpha")
        go(d, "transfers")

        def uploading(d):
            for c in d.find_elements(By.CSS_SELECTOR, "#uploads .transfer.upload"):
                if a.file in c.text and "beta" in c.text:
                    pct = float(c.find_element(By.CSS_SELECTOR, ".pct").text.rstrip("%"))
                    if 1 <= pct <= 95:
                        return pct
            return None
        RESULTS["upload_progress_seen_pct"] = wait(d, f"the upload of {a.file}", uploading, 90)
        shot(d, a.shots, "holder-upload")
        check_console(d)
    finally:
        d.quit()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("role", choices=["fetcher", "holder"])
    p.add_argument("--url", required=True)
    p.add_argument("--shots", required=True)
    p.add_argument("--file", default="concert.mkv")
    p.add_argument("--big", default="big.bin")
    p.add_argument("--add-file")
    a = p.parse_args()
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        print(f"SKIP {CHROMIUM} or {CHROMEDRIVER} is missing (apt-get install chromium chromium-driver)")
        sys.exit(77)
    try:
        fetcher(a) if a.role == "fetcher" else holder(a)
    except Failed as e:
        print(f"FAILED {a.role}: {e}; measured so far {json.dumps(RESULTS)}")
        sys.exit(1)
    print("RESULT " + json.dumps(RESULTS), flush=True)


if __name__ == "__main__":
    main()
