"""The human rank kit: server on 127.0.0.1, answers CSV, summary, and a real browser session.

The browser test drives Debian's headless Chromium over the DevTools
protocol; it is skipped when chromium is not installed.
"""

import base64
import csv
import fcntl
import json
import os
import re
import select
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
from PIL import Image

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVE = os.path.join(REPO_ROOT, "tools", "human_rank", "serve.py")
SUMMARISE = os.path.join(REPO_ROOT, "tools", "human_rank", "summarise.py")
CHROMIUM = shutil.which("chromium")
HEADLESS_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync")
RED = (220, 20, 20)
BLUE = (20, 20, 220)


@pytest.fixture
def kit(tmp_path):
    """Two methods that draw solid red and solid blue images for two captions."""
    for name, colour in (("red", RED), ("blue", BLUE)):
        folder = tmp_path / name
        folder.mkdir()
        for caption_id in (1, 2):
            Image.new("RGB", (64, 64), colour).save(folder / f"{caption_id:04d}.png")
    captions = tmp_path / "captions.txt"
    captions.write_text("a small bird\n\na red <b>flower</b> & leaves\n", encoding="utf-8")
    return tmp_path


class Server:
    """serve.py started with --port=0; `url` is the address it prints."""

    def __init__(self, kit, methods=None, extra=()):
        methods = methods or f"red:{kit / 'red'},blue:{kit / 'blue'}"
        self.out = kit / "answers.csv"
        self.log_path = kit / "server.log"
        # The log goes to a file, because an undrained pipe could fill and block the server.
        with open(self.log_path, "a", encoding="utf-8") as log:
            self.process = subprocess.Popen(
                [sys.executable, SERVE, f"--methods={methods}",
                 f"--captions={kit / 'captions.txt'}", "--port=0", f"--out={self.out}",
                 "--seed=0", *extra],
                stdout=subprocess.PIPE, stderr=log, text=True)
        line = self.process.stdout.readline()
        if not line.startswith("Serving on "):
            self.process.kill()
            raise AssertionError(f"server did not start: {line!r} {self.log()}")
        self.url = line.split()[-1]

    def log(self):
        return self.log_path.read_text(encoding="utf-8")

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=10)


@pytest.fixture
def server(kit):
    running = Server(kit)
    yield running
    running.stop()


def read_rows(path):
    with open(path, newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def get(url):
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.read().decode("utf-8")


def post(url, fields):
    data = urllib.parse.urlencode(fields).encode()
    try:
        with urllib.request.urlopen(url, data=data, timeout=10) as response:
            return response.status, response.read().decode("utf-8")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode("utf-8")


def token_of(page):
    return page.split('name="token" value="')[1].split('"')[0]


def summarise(csv_path):
    return subprocess.run([sys.executable, SUMMARISE, str(csv_path), "--title=toy"],
                          capture_output=True, text=True, timeout=60)


# --- Server over HTTP ------------------------------------------------------------


def test_server_binds_loopback(server):
    assert urllib.parse.urlsplit(server.url).hostname == "127.0.0.1"


def test_page_escapes_caption(server):
    _, first = get(server.url + "?rater=ann")
    post(server.url + "answer", {"token": token_of(first), "quality_0": 1, "quality_1": 2,
                                 "correlation_0": 1, "correlation_1": 2})
    _, second = get(server.url + "?rater=ann")
    assert "a red &lt;b&gt;flower&lt;/b&gt; &amp; leaves" in second
    assert "<b>flower</b>" not in second


def test_page_hides_method_names(server):
    _, page = get(server.url + "?rater=ann")
    assert not re.search(r"\bred\b", page)
    assert not re.search(r"\bblue\b", page)


def test_answer_appends_rows(server):
    _, page = get(server.url + "?rater=ann")
    status, _ = post(server.url + "answer", {"token": token_of(page), "quality_0": 2,
                                             "quality_1": 1, "correlation_0": 1,
                                             "correlation_1": 2})
    assert status == 200  # urllib follows the 303 to the next caption
    rows = read_rows(server.out)
    assert [row["rater_id"] for row in rows] == ["ann", "ann"]
    assert [row["caption_id"] for row in rows] == ["1", "1"]
    assert sorted(row["method"] for row in rows) == ["blue", "red"]
    assert {row["order"] for row in rows} == {"|".join(row["method"] for row in rows)}
    by_slot = {row["slot"]: row for row in rows}
    assert by_slot["0"]["quality_rank"] == "2"
    assert by_slot["1"]["quality_rank"] == "1"


def test_repeated_rank_rejected(server):
    _, page = get(server.url + "?rater=ann")
    status, body = post(server.url + "answer", {"token": token_of(page), "quality_0": 1,
                                                "quality_1": 1, "correlation_0": 1,
                                                "correlation_1": 2})
    assert status == 400
    assert "each rank from 1 to 2 once" in body
    assert not server.out.exists()


def test_missing_rank_rejected(server):
    _, page = get(server.url + "?rater=ann")
    status, body = post(server.url + "answer", {"token": token_of(page), "quality_0": 1,
                                                "quality_1": 2, "correlation_0": 1})
    assert status == 400
    assert "text correlation rank for image 2" in body


def test_unknown_token_rejected(server):
    status, body = post(server.url + "answer", {"token": "nope", "quality_0": 1,
                                                "quality_1": 2, "correlation_0": 1,
                                                "correlation_1": 2})
    assert status == 400
    assert "unknown or expired" in body


def test_second_answer_same_page_rejected(server):
    _, page = get(server.url + "?rater=ann")
    fields = {"token": token_of(page), "quality_0": 1, "quality_1": 2, "correlation_0": 1,
              "correlation_1": 2}
    post(server.url + "answer", fields)
    status, _ = post(server.url + "answer", fields)
    assert status == 400
    assert len(read_rows(server.out)) == 2


def test_invalid_rater_rejected(server):
    try:
        get(server.url + "?rater=" + urllib.parse.quote("<script>"))
    except urllib.error.HTTPError as error:
        assert error.code == 400
        assert "&lt;script&gt;" in error.read().decode()
    else:
        pytest.fail("an invalid rater id was accepted")


def test_done_after_all_captions(server):
    for _ in range(2):
        _, page = get(server.url + "?rater=ann")
        post(server.url + "answer", {"token": token_of(page), "quality_0": 1, "quality_1": 2,
                                     "correlation_0": 1, "correlation_1": 2})
    _, page = get(server.url + "?rater=ann")
    assert 'id="done"' in page
    assert "all 2 captions" in page


def test_restart_resumes_rater(kit):
    first = Server(kit)
    _, page = get(first.url + "?rater=ann")
    post(first.url + "answer", {"token": token_of(page), "quality_0": 1, "quality_1": 2,
                                "correlation_0": 1, "correlation_1": 2})
    first.stop()
    second = Server(kit)
    try:
        _, page = get(second.url + "?rater=ann")
    finally:
        second.stop()
    assert "caption 2 of 2" in page


def test_missing_folder_names_it(kit):
    result = subprocess.run(
        [sys.executable, SERVE, f"--methods=red:{kit / 'red'},gone:{kit / 'gone'}",
         f"--captions={kit / 'captions.txt'}", "--port=0"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "gone" in result.stderr
    assert "not found" in result.stderr


def test_single_method_rejected(kit):
    result = subprocess.run(
        [sys.executable, SERVE, f"--methods=red:{kit / 'red'}",
         f"--captions={kit / 'captions.txt'}", "--port=0"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "at least two" in result.stderr


def test_caption_without_image_left_out(kit):
    os.remove(kit / "blue" / "0002.png")
    running = Server(kit)
    try:
        _, page = get(running.url + "?rater=ann")
        post(running.url + "answer", {"token": token_of(page), "quality_0": 1, "quality_1": 2,
                                      "correlation_0": 1, "correlation_1": 2})
        _, page = get(running.url + "?rater=ann")
    finally:
        running.stop()
    assert "all 1 captions" in page
    assert "Left out 1 of 2 captions" in running.log()


# --- Summary ---------------------------------------------------------------------


def write_answers(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["rater_id", "caption_id", "method", "slot", "order", "quality_rank",
                         "correlation_rank", "timestamp"])
        writer.writerows(rows)


def test_summary_mean_and_std(tmp_path):
    path = tmp_path / "answers.csv"
    write_answers(path, [
        ["a", 1, "sdn", 0, "sdn|gan", 1, 2, "t"], ["a", 1, "gan", 1, "sdn|gan", 2, 1, "t"],
        ["b", 1, "sdn", 1, "gan|sdn", 2, 2, "t"], ["b", 1, "gan", 0, "gan|sdn", 1, 1, "t"],
        ["b", 2, "sdn", 0, "sdn|gan", 1, 1, "t"], ["b", 2, "gan", 1, "sdn|gan", 2, 2, "t"],
    ])
    result = summarise(path)
    assert result.returncode == 0, result.stderr
    assert "| sdn | 1.33 ± 0.47 | 1.67 ± 0.47 | 3 |" in result.stdout
    assert "| gan | 1.67 ± 0.47 | 1.33 ± 0.47 | 3 |" in result.stdout
    assert "2 raters, 2 captions" in result.stdout


def test_summary_counts_repeats(tmp_path):
    path = tmp_path / "answers.csv"
    write_answers(path, [
        ["a", 1, "sdn", 0, "sdn|gan", 2, 2, "t"], ["a", 1, "gan", 1, "sdn|gan", 1, 1, "t"],
        ["a", 1, "sdn", 0, "sdn|gan", 1, 1, "t"], ["a", 1, "gan", 1, "sdn|gan", 2, 2, "t"],
        ["a", "x", "gan", 1, "sdn|gan", 2, 2, "t"],
    ])
    result = summarise(path)
    assert "| sdn | 1.00 ± 0.00 | 1.00 ± 0.00 | 1 |" in result.stdout
    assert "Left out 2 rows: repeated answer." in result.stdout
    assert "Left out 1 rows: malformed row." in result.stdout


def test_summary_rejects_other_csv(tmp_path):
    path = tmp_path / "other.csv"
    path.write_text("a,b\n1,2\n", encoding="utf-8")
    result = summarise(path)
    assert result.returncode == 2
    assert "lacks the columns" in result.stderr


# --- Real browser ----------------------------------------------------------------


class Chromium:
    """Headless Chromium driven over the DevTools protocol on a pipe.

    With --remote-debugging-pipe, Chromium reads commands from file
    descriptor 3 and writes replies and events to descriptor 4, each message
    a JSON object followed by a NUL byte. Only the standard library is needed.
    """

    def __init__(self, timeout=30.0):
        self.timeout = timeout
        to_browser_read, self.to_browser = os.pipe()
        self.from_browser, from_browser_write = os.pipe()

        def place_pipes():
            # Duplicate above 4 first, so that moving one pipe to 3 or 4
            # cannot overwrite the other.
            read_end = fcntl.fcntl(to_browser_read, fcntl.F_DUPFD, 10)
            write_end = fcntl.fcntl(from_browser_write, fcntl.F_DUPFD, 10)
            os.dup2(read_end, 3)
            os.dup2(write_end, 4)

        self.profile = tempfile.mkdtemp(prefix="chromium-")
        self.process = subprocess.Popen(
            [CHROMIUM, *HEADLESS_FLAGS, "--remote-debugging-pipe",
             f"--user-data-dir={self.profile}", "--window-size=1000,800", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=False,
            preexec_fn=place_pipes)
        os.close(to_browser_read)
        os.close(from_browser_write)
        self.buffer = b""
        self.next_id = 0
        self.events = []
        target = self.command("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.command("Target.attachToTarget",
                                    {"targetId": target, "flatten": True})["sessionId"]
        self.command("Page.enable", session=True)

    def _read_message(self, deadline):
        while b"\0" not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self.from_browser], [], [], remaining)[0]:
                raise TimeoutError("Chromium sent no DevTools message in time")
            chunk = os.read(self.from_browser, 1 << 16)
            if not chunk:
                raise ConnectionError("Chromium closed its DevTools pipe")
            self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)

    def command(self, method, params=None, session=False):
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self.session
        os.write(self.to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method} failed: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for_load(self):
        """Wait for the next Page.loadEventFired, including one that already arrived."""
        deadline = time.monotonic() + self.timeout
        while True:
            for index, event in enumerate(self.events):
                if event.get("method") == "Page.loadEventFired":
                    del self.events[: index + 1]
                    return
            self.events.append(self._read_message(deadline))

    def navigate(self, url):
        self.events.clear()
        self.command("Page.navigate", {"url": url}, session=True)
        self.wait_for_load()

    def evaluate(self, expression):
        result = self.command("Runtime.evaluate", {"expression": expression,
                                                   "returnByValue": True,
                                                   "awaitPromise": True}, session=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def click_and_wait(self, element_id):
        """Click a submit button and wait until the page it leads to has loaded."""
        self.events.clear()
        self.evaluate(f"document.getElementById({json.dumps(element_id)}).click()")
        self.wait_for_load()

    def screenshot(self, path):
        data = self.command("Page.captureScreenshot", session=True)["data"]
        with open(path, "wb") as file:
            file.write(base64.b64decode(data))

    def close(self):
        try:
            self.command("Browser.close")
        except (TimeoutError, ConnectionError, RuntimeError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self.to_browser)
        os.close(self.from_browser)
        shutil.rmtree(self.profile, ignore_errors=True)


# Resolves to the [R, G, B] of a pixel of image `slot` once the image has loaded.
PIXEL_SCRIPT = """
new Promise((resolve, reject) => {
  const image = document.getElementById('image_%d');
  const read = () => {
    const canvas = document.createElement('canvas');
    canvas.width = image.naturalWidth;
    canvas.height = image.naturalHeight;
    const context = canvas.getContext('2d');
    context.drawImage(image, 0, 0);
    resolve(Array.from(context.getImageData(2, 2, 1, 1).data.slice(0, 3)));
  };
  if (image.complete && image.naturalWidth > 0) { read(); }
  else { image.onload = read; image.onerror = () => reject('image failed to load'); }
})
"""


def select_rank(browser, name, rank):
    browser.evaluate(f"document.querySelector('select[name={name}]').value = '{rank}'")


def test_browser_ranking_decodes(server, tmp_path):
    if not CHROMIUM:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    browser = Chromium()
    try:
        browser.navigate(server.url)
        browser.evaluate("document.getElementById('rater').value = 'rater7'")
        browser.click_and_wait("start")
        browser.screenshot(tmp_path / "first_caption.png")
        for _ in range(2):
            # Rank by what the page shows: red best in quality, blue best in correlation.
            colours = [tuple(browser.evaluate(PIXEL_SCRIPT % slot)) for slot in range(2)]
            assert sorted(colours) == sorted([RED, BLUE])
            for slot, colour in enumerate(colours):
                select_rank(browser, f"quality_{slot}", 1 if colour == RED else 2)
                select_rank(browser, f"correlation_{slot}", 1 if colour == BLUE else 2)
            browser.click_and_wait("submit")
        done_text = browser.evaluate("document.getElementById('done').textContent")
    finally:
        browser.close()

    assert "all 2 captions" in done_text
    rows = read_rows(server.out)
    assert len(rows) == 4
    for row in rows:
        assert row["rater_id"] == "rater7"
        assert row["quality_rank"] == ("1" if row["method"] == "red" else "2")
        assert row["correlation_rank"] == ("1" if row["method"] == "blue" else "2")
        assert row["order"].split("|")[int(row["slot"])] == row["method"]
    result = summarise(server.out)
    assert "| red | 1.00 ± 0.00 | 2.00 ± 0.00 | 2 |" in result.stdout
    assert "| blue | 2.00 ± 0.00 | 1.00 ± 0.00 | 2 |" in result.stdout
