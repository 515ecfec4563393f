#!/usr/bin/env python3
"""Delivered messages per second in one browser page (issue 15).

One `pushwire serve --web` (release build), headless Chromium (Debian's `chromium` and
`chromium-driver` through Selenium 4, as test/browser_test.py) on its chat page at
https://localhost:PORT/. In that page, Selenium's execute_async_script imports the
library the server serves (`/pushwire.js`, same origin, so the default origin check
passes), connects as user `page` (echo off) and subscribes to group 1; a
`published` handler counts the publications and notes the first and last arrival
(performance.now()). Then the native CLI, `pushwire pub 1 --repeat M --no-echo`,
publishes M messages of S bytes to group 1 (pipelined; the server's flow control holds
it back if the page falls behind). The page's rate is M / (last arrival - first
arrival); the script also reports whether all M arrived, gaps, and the publisher's
wall time.

Environment: PUSHWIRE_BIN (default target/release/pushwire), CHROMIUM, CHROMEDRIVER,
RUNS (default 3 per workload), WORKLOADS (default "16:200000 1024:100000", size:messages).
Runner: benches/browser_rate.sh. Prints one `result ...` line per run and a summary
table of the medians.
"""

import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
from browser_test import CERT, CHROMIUM, ROOT, headless_chromium, spki_hash, stop_process  # noqa: E402

BIN = os.environ.get("PUSHWIRE_BIN") or os.path.join(ROOT, "target", "release", "pushwire")
RUNS = int(os.environ.get("RUNS", "3"))
WORKLOADS = [
    tuple(int(x) for x in w.split(":"))
    for w in os.environ.get("WORKLOADS", "16:200000 1024:100000").split()
]

SUBSCRIBE = """
const done = arguments[arguments.length - 1];
import("/pushwire.js").then(async (pw) => {
  const b = { count: 0, bytes: 0, first: 0, last: 0, gaps: 0, closed: null };
  window.__bench = b;
  const client = await pw.connect({
    url: `wss://${location.host}/`, userId: "page", password: "MyPassword", echo: false,
  });
  window.__client = client;
  client.on("published", (e) => {
    const now = performance.now();
    if (b.count === 0) b.first = now;
    b.count += 1;
    b.bytes += e.payload.length;
    b.last = now;
  });
  client.on("gap", () => { b.gaps += 1; });
  client.on("closed", (e) => { b.closed = `${e.source} ${e.codeName} ${e.reason}`; });
  await client.subscribe([1]);
  done("subscribed");
}).catch((e) => done(`error: ${e && e.stack || e}`));
"""

STATE = "return window.__bench;"
UNSUBSCRIBE = """
const done = arguments[arguments.length - 1];
window.__client.close("done").then(() => done("closed"));
"""


def start_server():
    proc = subprocess.Popen(
        [BIN, "serve", "--web", "--listen", "127.0.0.1:0"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "RUST_LOG": "warn"},
    )
    addr = url = None
    while url is None:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"server exited with {proc.wait()} before its URL")
        if line.startswith("listening on "):
            addr = line[len("listening on "):].strip()
        if line.startswith("web chat on "):
            url = line[len("web chat on "):].strip()
    return proc, addr, url


def browser(workdir):
    return headless_chromium(
        tempfile.mkdtemp(prefix="bench-", dir=workdir), spki_hash(CERT), 15
    )


def one_run(driver, size, msgs):
    server, addr, url = start_server()
    try:
        driver.get(url)
        if driver.title != "pushwire chat":
            raise RuntimeError(f"{url} did not load the chat page (title {driver.title!r})")
        answer = driver.execute_async_script(SUBSCRIBE)
        if answer != "subscribed":
            raise RuntimeError(f"the page did not subscribe: {answer}")
        message = "x" * size
        t0 = time.monotonic()
        pub = subprocess.run(
            [BIN, "pub", "1", "--repeat", str(msgs), "--no-echo", "--server", addr,
             "--user", "publisher", "-m", message],
            cwd=ROOT, capture_output=True, text=True, timeout=120,
        )
        pub_seconds = time.monotonic() - t0
        if pub.returncode != 0:
            raise RuntimeError(f"pushwire pub exited {pub.returncode}: {pub.stderr.strip()}")
        # Wait until all arrived, or nothing more arrives for 5 s.
        last_count, last_change = -1, time.monotonic()
        while True:
            b = driver.execute_script(STATE)
            if b["count"] >= msgs or b["closed"]:
                break
            if b["count"] != last_count:
                last_count, last_change = b["count"], time.monotonic()
            elif time.monotonic() - last_change > 5:
                break
            time.sleep(0.05)
        driver.execute_async_script(UNSUBSCRIBE)
        seconds = (b["last"] - b["first"]) / 1000
        rate = (b["count"] - 1) / seconds if seconds > 0 else 0
        return {
            "size": size, "msgs": msgs, "received": b["count"], "all": b["count"] == msgs,
            "gaps": b["gaps"], "closed": b["closed"], "seconds": seconds, "rate": rate,
            "mib_per_s": b["bytes"] / seconds / 2**20 if seconds > 0 else 0,
            "pub_seconds": pub_seconds,
        }
    finally:
        stop_process(server)


def main():
    version = subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True).stdout.strip()
    print(f"{version}; {os.cpu_count()} CPUs; server {BIN}; {RUNS} runs per workload", flush=True)
    summary = []
    with tempfile.TemporaryDirectory(prefix="pushwire-browser-bench-") as workdir:
        driver = browser(workdir)
        try:
            for size, msgs in WORKLOADS:
                runs = []
                for _ in range(RUNS):
                    r = one_run(driver, size, msgs)
                    runs.append(r)
                    print(
                        f"result size={size} msgs={msgs} received={r['received']} all={r['all']} "
                        f"gaps={r['gaps']} closed={r['closed']} seconds={r['seconds']:.3f} "
                        f"rate={r['rate']:.0f} mib_per_s={r['mib_per_s']:.2f} "
                        f"pub_seconds={r['pub_seconds']:.3f}",
                        flush=True,
                    )
                summary.append((size, msgs, runs))
        finally:
            driver.quit()
    print()
    print(f"medians over {RUNS} runs (a fresh server each): messages/s received in one page, first to last arrival")
    print("| payload | messages | page msg/s | payload MiB/s | all arrived | publisher wall s |")
    print("| ---: | ---: | ---: | ---: | --- | ---: |")
    ok = True
    for size, msgs, runs in summary:
        arrived = all(r["all"] for r in runs)
        ok = ok and arrived
        print(
            f"| {size} B | {msgs} | {statistics.median(r['rate'] for r in runs):.0f} | "
            f"{statistics.median(r['mib_per_s'] for r in runs):.2f} | "
            f"{'yes' if arrived else 'NO'} ({sum(r['received'] for r in runs)}/{msgs * len(runs)}) | "
            f"{statistics.median(r['pub_seconds'] for r in runs):.2f} |"
        )
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
