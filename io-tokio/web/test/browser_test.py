#!/usr/bin/env python3
"""The chat page in a real browser (issue 15).

Headless Chromium driven by Selenium 4 through chromedriver (Debian's `chromium` and
`chromium-driver`; nothing is downloaded). One `pushwire serve --web`, two browsers
on its chat page (alice and bob) and one `pushwire sub 1 --json` CLI process (carol):

- a publication from alice's page reaches bob's page and the CLI;
- a `pushwire pub` from the CLI reaches both pages;
- presence: bob's (and carol's) join appears on alice's page;
- user messages (`pushwire send bob`, and the page's direct form) reach bob's page;
- say_hello answers on a page;
- the server is killed and a new one started on the same port: each page reconnects
  and says either "session resumed" or that the server lost the session (then joins
  group 1 again), and a publication after the restart reaches the other page.

Screenshots of both pages go to target/browser/{alice,bob}.png (under the repository
root) at the end and on failure; a failure also prints the pages' event logs, the
browsers' console and the servers' stderr, and exits 1.

Environment: PUSHWIRE_BIN (default target/debug/pushwire), CHROMIUM (default
/usr/bin/chromium), CHROMEDRIVER (default /usr/bin/chromedriver). Runner:
io-tokio/web/test/browser.sh.
"""

import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor

from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
BIN = os.environ.get("PUSHWIRE_BIN") or os.path.join(ROOT, "target", "debug", "pushwire")
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
CERT = os.path.join(ROOT, "certs", "server.cert.pem")
CA = os.path.join(ROOT, "certs", "ca.cert.pem")
OUT = os.path.join(ROOT, "target", "browser")
WAIT = 15  # seconds, for every explicit wait
START = time.monotonic()


def note(text):
    print(f"[{time.monotonic() - START:5.1f}s] {text}", flush=True)


def free_port():
    """A port free on 127.0.0.1 now; the server binds it, and the restarted one again."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spki_hash(cert_path):
    """Base64 SHA-256 of the certificate's SubjectPublicKeyInfo, for Chromium's
    --ignore-certificate-errors-spki-list."""
    pubkey = subprocess.run(
        ["openssl", "x509", "-in", cert_path, "-pubkey", "-noout"],
        check=True, capture_output=True,
    ).stdout
    der = subprocess.run(
        ["openssl", "pkey", "-pubin", "-outform", "der"],
        input=pubkey, check=True, capture_output=True,
    ).stdout
    digest = subprocess.run(
        ["openssl", "dgst", "-sha256", "-binary"], input=der, check=True, capture_output=True,
    ).stdout
    return subprocess.run(
        ["openssl", "base64", "-A"], input=digest, check=True, capture_output=True,
    ).stdout.decode().strip()


def stop_process(proc, sig=signal.SIGTERM):
    """Sends `sig` and waits up to 5 s, then kills: a process never outlives a run."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def headless_chromium(profile_dir, spki, timeout, extra_args=(), log_console=False):
    """Headless Chromium through chromedriver, trusting exactly the key hashing to `spki`."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--user-data-dir={profile_dir}",
        # Trust exactly the server's key, nothing else: Chromium skips certificate
        # errors only for a chain holding a certificate whose SubjectPublicKeyInfo
        # hashes to this value (the flag is honoured only with --user-data-dir).
        # Every other certificate is still checked, unlike with
        # --ignore-certificate-errors or acceptInsecureCerts. No NSS database and
        # no `certutil` needed.
        f"--ignore-certificate-errors-spki-list={spki}",
        "--no-first-run",
        "--no-default-browser-check",
        *extra_args,
    ):
        options.add_argument(arg)
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        options.add_argument("--no-sandbox")  # Chromium refuses to run as root otherwise
    if log_console:
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(timeout)
    driver.set_script_timeout(timeout)
    return driver


class Server:
    """One `pushwire serve --web` process on a given port; stderr kept in a file."""

    def __init__(self, port, workdir, name):
        self.port = port
        self.stderr_path = os.path.join(workdir, f"{name}.stderr")
        self.name = name
        self.proc = None
        self.url = None

    def start(self):
        # A port just released may take a moment to bind again: retry "cannot listen".
        deadline = time.monotonic() + WAIT
        while True:
            with open(self.stderr_path, "ab") as err:
                self.proc = subprocess.Popen(
                    [BIN, "serve", "--web", "--listen", f"127.0.0.1:{self.port}"],
                    cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True,
                )
            lines = []
            while True:
                line = self.proc.stdout.readline()
                if not line:
                    break
                lines.append(line.strip())
                if line.startswith("web chat on "):
                    self.url = line[len("web chat on "):].strip()
                    note(f"{self.name}: {' / '.join(lines)}")
                    return
            code = self.proc.wait()
            if code == 1 and time.monotonic() < deadline:
                time.sleep(0.2)
                continue
            raise AssertionError(f"{self.name} exited with {code} before its URL: {lines}")

    def stop(self):
        stop_process(self.proc)

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stderr(self):
        try:
            with open(self.stderr_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            return ""


class Cli:
    """`pushwire sub 1 --json`: its stdout lines collected by a thread."""

    def __init__(self, args):
        self.proc = subprocess.Popen(
            [BIN, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.lines = []
        self.errors = []
        self.changed = threading.Condition()
        threading.Thread(target=self._read, args=(self.proc.stdout, self.lines), daemon=True).start()
        threading.Thread(target=self._read, args=(self.proc.stderr, self.errors), daemon=True).start()

    def _read(self, stream, into):
        for line in stream:
            with self.changed:
                into.append(line.rstrip("\n"))
                self.changed.notify_all()

    def wait_for(self, needle, what):
        deadline = time.monotonic() + WAIT
        with self.changed:
            while not any(needle in line for line in self.lines):
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self.lines):
                    raise AssertionError(f"CLI: no line with {needle!r} ({what}) within {WAIT} s")
                self.changed.wait(min(left, 0.5))
        note(f"CLI: {what}")

    def stop(self):
        # SIGINT, as Ctrl-C: `sub` closes its connection normally, so the server ends
        # its session at once (and tells the group). After a drop without a Close
        # (SIGTERM, SIGKILL) the session would be kept for a resume instead.
        stop_process(self.proc, signal.SIGINT)


def run_cli(*args):
    """A one-shot `pushwire pub`/`send`; fails the test unless it exits 0."""
    done = subprocess.run([BIN, *args], cwd=ROOT, capture_output=True, text=True, timeout=WAIT)
    if done.returncode != 0:
        raise AssertionError(f"pushwire {' '.join(args)} exited {done.returncode}: {done.stderr}")
    return done.stdout.strip()


class Page:
    """One browser (its own chromedriver session and profile) on the chat page."""

    def __init__(self, name, spki, workdir):
        self.name = name
        self.driver = headless_chromium(
            tempfile.mkdtemp(prefix=f"{name}-", dir=workdir),
            spki,
            WAIT,
            extra_args=("--window-size=1100,900",),
            log_console=True,
        )

    def el(self, id_):
        return self.driver.find_element(By.ID, id_)

    def log(self):
        return self.driver.execute_script("return document.getElementById('log').textContent")

    def body(self):
        return self.driver.execute_script("return document.body ? document.body.innerText : ''")

    def wait(self, predicate, what):
        try:
            WebDriverWait(self.driver, WAIT, poll_frequency=0.1).until(lambda _d: predicate())
        except TimeoutException:
            raise AssertionError(f"{self.name}'s page: not within {WAIT} s: {what}") from None
        note(f"{self.name}: {what}")

    def wait_log(self, needle, what=None, count=1):
        self.wait(lambda: self.log().count(needle) >= count, what or f"log shows {needle!r}")

    def wait_members(self, group, user):
        self.wait(
            lambda: user in [li.text for li in self.el(f"m{group}").find_elements(By.TAG_NAME, "li")],
            f"{user} in group {group}'s member list",
        )

    def login(self, url):
        self.driver.get(url)
        title = self.driver.title
        if title != "pushwire chat":
            # Chromium's interstitial when the certificate is not trusted, for one.
            raise AssertionError(
                f"{self.name}: {url} did not load the chat page (title {title!r}; "
                f"an untrusted certificate?): {self.body()[:300]!r}"
            )
        self.el("user").send_keys(self.name)
        self.el("password").send_keys("MyPassword")
        self.el("connect").click()
        self.wait(lambda: self.el("status").text == f"connected as {self.name}", "logged in")

    def join(self, group):
        self.el(f"g{group}").click()
        self.wait_log(f"me joined {group}", f"joined group {group}")

    def publish(self, text):
        self.el("message").send_keys(text)
        self.el("publish").find_element(By.TAG_NAME, "button").click()

    def direct(self, receiver, text):
        self.el("receiver").clear()
        self.el("receiver").send_keys(receiver)
        self.el("dm").send_keys(text)
        self.el("direct").find_element(By.TAG_NAME, "button").click()

    def say_hello(self):
        self.el("hello").find_element(By.TAG_NAME, "button").click()

    def screenshot(self):
        path = os.path.join(OUT, f"{self.name}.png")
        try:
            self.driver.save_screenshot(path)
            return path
        except Exception as e:  # noqa: BLE001 - a dead browser must not hide the failure
            return f"(no screenshot of {self.name}: {e})"

    def dump(self):
        print(f"----- {self.name}'s page: status and event log", file=sys.stderr)
        try:
            print(f"url: {self.driver.current_url}, title: {self.driver.title!r}", file=sys.stderr)
            status = self.driver.execute_script(
                "const s = document.getElementById('status'); return s && s.textContent"
            )
            if status is None:
                print("(not the chat page) body:", self.body()[:2000], file=sys.stderr)
            else:
                print(f"status: {status}", file=sys.stderr)
                print(self.log(), file=sys.stderr)
        except Exception as e:  # noqa: BLE001
            print(f"(cannot read the page: {getattr(e, 'msg', e)})", file=sys.stderr)
        print(f"----- {self.name}'s browser console", file=sys.stderr)
        try:
            for entry in self.driver.get_log("browser"):
                print(f"{entry.get('level')} {entry.get('message')}", file=sys.stderr)
        except Exception as e:  # noqa: BLE001
            print(f"(no console log: {e})", file=sys.stderr)

    def quit(self):
        try:
            self.driver.quit()
        except Exception:  # noqa: BLE001
            pass


def scenario(servers, pages, clis, workdir, port):
    first = Server(port, workdir, "server")
    servers.append(first)
    first.start()
    url = first.url
    assert url == f"https://localhost:{port}/", f"unexpected page URL {url}"

    # The two browsers start in parallel (each takes a second or two).
    spki = spki_hash(CERT)
    with ThreadPoolExecutor(2) as pool:
        for page in pool.map(lambda name: Page(name, spki, workdir), ["alice", "bob"]):
            pages[page.name] = page
    alice, bob = pages["alice"], pages["bob"]
    note("browsers up")

    alice.login(url)
    bob.login(url)
    alice.join(1)
    bob.join(1)

    # Presence: bob's join is on alice's page, in the log and in group 1's members.
    alice.wait_log("bob joined 1", "presence: bob joined 1")
    alice.wait_members(1, "bob")
    alice.wait_members(1, "alice (me)")

    server = f"127.0.0.1:{port}"
    common = ["--server", server, "--ca", CA, "--server-name", "localhost"]
    sub = Cli(["sub", "1", "--json", "--user", "carol", *common])
    clis.append(sub)
    sub.wait_for('"event":"subscribe"', "carol subscribed to group 1")
    alice.wait_log("carol joined 1", "presence: carol (CLI) joined 1")
    bob.wait_log("carol joined 1", "presence: carol (CLI) joined 1")

    # A publication from a page reaches the other page and the CLI.
    alice.publish("hello from alice's page")
    bob.wait_log("[1] alice: hello from alice's page", "alice's publication arrived")
    alice.wait_log("[1] me: hello from alice's page", "alice's own publication echoed")
    sub.wait_for('"message":"hello from alice\'s page"', "alice's publication arrived")
    assert any('"user_id":"alice"' in l and "hello from alice's page" in l for l in sub.lines), sub.lines

    # A publication from the CLI reaches both pages.
    run_cli("pub", "1", "--message", "hello from the CLI", "--user", "dave", *common)
    alice.wait_log("[1] dave: hello from the CLI", "the CLI's publication arrived")
    bob.wait_log("[1] dave: hello from the CLI", "the CLI's publication arrived")

    # User messages: from the CLI, and from alice's page through the direct form.
    out = run_cli("send", "bob", "--message", "psst, bob", "--user", "dave", *common)
    assert "Delivered to 1 connection of bob" in out, out
    bob.wait_log("dave → me: psst, bob", "dave's user message arrived")
    alice.direct("bob", "hi bob, alice here")
    bob.wait_log("alice → me: hi bob, alice here", "alice's user message arrived")
    alice.wait_log("me → bob: hi bob, alice here (reached 1 connection)", "alice's send confirmed")

    # say_hello on a page.
    bob.say_hello()
    bob.wait_log("say_hello → Hello Jack Smith", "say_hello answered")

    # Restart: the CLI ends first (its leave is presence too), the server is killed
    # (SIGKILL: no goodbye, as in a crash), a new one
    # starts on the same port. Each page reconnects, then either resumes or is told
    # the session is lost and joins group 1 again.
    sub.stop()
    alice.wait_log("carol left 1", "presence: carol (CLI) left 1")
    bob.wait_log("carol left 1", "presence: carol (CLI) left 1")
    joined_before = {p.name: p.log().count("me joined 1") for p in pages.values()}
    first.kill()
    note("server killed")
    for page in pages.values():
        page.wait_log("connection lost", "saw the connection drop")
    second = Server(port, workdir, "restarted-server")
    servers.append(second)
    second.start()
    assert second.url == url, (second.url, url)
    for page in pages.values():
        page.wait(lambda p=page: p.el("status").text == f"connected as {p.name}", "reconnected")
        page.wait(
            lambda p=page: "back, session resumed" in p.log() or "the server lost the session" in p.log(),
            "a resume or an explicit session lost",
        )
        resumed = "back, session resumed" in page.log()
        note(f"{page.name}: {'session resumed' if resumed else 'session lost, rejoining'}")
        if not resumed:
            page.wait_log("me joined 1", "joined group 1 again", count=joined_before[page.name] + 1)
        page.wait(lambda p=page: p.el("g1").is_selected(), "group 1 ticked again")
    alice.publish("after the restart")
    bob.wait_log("[1] alice: after the restart", "a publication after the restart arrived")
    bob.publish("bob is back too")
    alice.wait_log("[1] bob: bob is back too", "bob's publication after the restart arrived")


def main():
    for path, what in ((BIN, "PUSHWIRE_BIN"), (CHROMIUM, "CHROMIUM"), (CHROMEDRIVER, "CHROMEDRIVER")):
        if not os.access(path, os.X_OK):
            print(f"browser test: {path} is not executable (set {what})", file=sys.stderr)
            return 2
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager never downloads
    os.makedirs(OUT, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="pushwire-browser-")
    servers, pages, clis = [], {}, []
    failed = False
    try:
        scenario(servers, pages, clis, workdir, free_port())
    except Exception:  # noqa: BLE001
        failed = True
        print("\nBROWSER TEST FAILED", file=sys.stderr)
        traceback.print_exc()
        for page in pages.values():
            page.dump()
        for cli in clis:
            print("----- pushwire sub's output", file=sys.stderr)
            print("\n".join(cli.lines + cli.errors), file=sys.stderr)
        for server in servers:
            print(f"----- {server.name}'s stderr", file=sys.stderr)
            print(server.stderr(), file=sys.stderr)
    finally:
        for page in pages.values():
            note(f"screenshot: {page.screenshot()}")
            page.quit()
        for cli in clis:
            cli.stop()
        for server in servers:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    if failed:
        return 1
    note("browser test passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
