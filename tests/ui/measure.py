#!/usr/bin/env python3
"""Measures a running dashboard in headless Chromium (for the figures of
docs/api.md's closing note; not a test):

  measure.py URL SEARCH_TERM [NODE_PID]

prints JSON: page load, time until the library's first rows show, time
from typing SEARCH_TERM until the list shows only matches, and the
library's total as the page reports it.
"""
import json
import sys
import time

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import dashboard as ui  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402


def main():
    url, term = sys.argv[1], sys.argv[2]
    d = ui.browser()
    try:
        started = time.monotonic()
        d.get(url)
        ui.wait(d, "the live event stream", lambda d: "on" in d.find_element(By.ID, "live").get_attribute("class"))
        ui.RESULTS["page_ready_ms"] = round((time.monotonic() - started) * 1000)
        ui.RESULTS["page_load_ms"] = d.execute_script(
            "const t = performance.getEntriesByType('navigation')[0]; return Math.round(t.loadEventEnd - t.startTime);")
        started = time.monotonic()
        d.find_element(By.CSS_SELECTOR, '#nav a[data-view="library"]').click()
        ui.wait(d, "first rows", lambda d: len(ui.rows(d)) > 0, 60)
        first_rows_ms = round((time.monotonic() - started) * 1000)
        total = d.find_element(By.ID, "range").text
        started = time.monotonic()
        ui.type_search(d, term)
        ui.wait(d, "search result", lambda d: ui.rows(d) and all(term in (n or "") for n in ui.rows(d)), 60)
        search_ms = round((time.monotonic() - started) * 1000)
        if len(sys.argv) > 3:  # the node's memory with the page open
            time.sleep(5)
            with open(f"/proc/{sys.argv[3]}/status") as f:
                rss = next(line.split()[1] for line in f if line.startswith("VmRSS"))
            ui.RESULTS["node_rss_kib_page_open"] = int(rss)
        print(json.dumps({**ui.RESULTS, "first_rows_ms": first_rows_ms, "search_ms": search_ms,
                          "range": total, "rows_after_search": len(ui.rows(d))}))
    finally:
        d.quit()


if __name__ == "__main__":
    main()
