"""The human rank kit: server on 127.0.0.1, answers CSV, summary, and a real browser session.

The browser test drives Debian's chromium and chromedriver through selenium;
it is skipped when any of them is missing.
"""

import csv
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request

import pytest
from PIL import Image

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVE = os.path.join(REPO_ROOT, "tools", "human_rank", "serve.py")
SUMMARISE = os.path.join(REPO_ROOT, "tools", "human_rank", "summarise.py")
CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
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


def browser():
    webdriver = pytest.importorskip(
        "selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    from selenium.webdriver.chrome.service import Service

    if not CHROMIUM or not CHROMEDRIVER:
        pytest.skip("chromium or chromedriver is not installed "
                    "(apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in HEADLESS_FLAGS:
        options.add_argument(flag)
    options.add_argument("--user-data-dir=" + tempfile.mkdtemp(prefix="chromium-"))
    # An explicit driver path keeps Selenium Manager from looking for drivers online.
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


PIXEL_SCRIPT = """
const image = arguments[0];
const canvas = document.createElement('canvas');
canvas.width = image.naturalWidth;
canvas.height = image.naturalHeight;
const context = canvas.getContext('2d');
context.drawImage(image, 0, 0);
return Array.from(context.getImageData(2, 2, 1, 1).data.slice(0, 3));
"""


def click_and_wait(driver, element_id):
    """Click a submit button and wait until the next page has replaced this one."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    page = driver.find_element(By.TAG_NAME, "html")
    driver.find_element(By.ID, element_id).click()
    WebDriverWait(driver, 20).until(expected_conditions.staleness_of(page))


def shown_colour(driver, slot):
    """Return the RGB colour of the image in `slot`, read back from the page once it loaded."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    image = driver.find_element(By.ID, f"image_{slot}")
    WebDriverWait(driver, 20).until(lambda _: driver.execute_script(
        "return arguments[0].complete && arguments[0].naturalWidth > 0", image))
    return tuple(driver.execute_script(PIXEL_SCRIPT, image))


def test_browser_ranking_decodes(server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    driver = browser()
    try:
        driver.get(server.url)
        driver.find_element(By.ID, "rater").send_keys("rater7")
        click_and_wait(driver, "start")
        for _ in range(2):
            # Rank by what the page shows: red best in quality, blue best in correlation.
            colours = [shown_colour(driver, slot) for slot in range(2)]
            assert sorted(colours) == sorted([RED, BLUE])
            for slot, colour in enumerate(colours):
                Select(driver.find_element(By.NAME, f"quality_{slot}")).select_by_value(
                    "1" if colour == RED else "2")
                Select(driver.find_element(By.NAME, f"correlation_{slot}")).select_by_value(
                    "1" if colour == BLUE else "2")
            click_and_wait(driver, "submit")
        assert "all 2 captions" in driver.find_element(By.ID, "done").text
    finally:
        driver.quit()

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
