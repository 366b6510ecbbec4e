"""Serve a local page on which people rank the images of several text-to-image methods.

In the human evaluation of Yuan & Peng's SDN paper (ACM MM 2018, Table 2),
raters rank the images that several methods drew for one caption, once by
image quality and once by how well the image matches the text, with 1 as
the best. This server shows,
for each caption, one image per method in a random order without method
names. Each submitted ranking appends one CSV row per method:

    rater_id, caption_id, method, slot, order, quality_rank, correlation_rank, timestamp

`slot` is the 0-based position at which the method's image was shown and
`order` lists the method names in display order, separated by "|", so every
answer can be decoded without the server. `summarise.py` turns the CSV into
a table of mean ranks.

  python tools/human_rank/serve.py --methods=sdn:runs/sdn_images,stackgan:runs/sg_images \
      --captions=captions.txt --port=8765 --out=answers.csv

Caption i is line i (1-based, blank lines not counted) of --captions. Each
method folder holds the image of caption i as a file whose name, without
extension, is i with any zero padding (0001.png, as sdn-generate writes it),
or i_1 for the first image of a diverse-synthesis caption (0001_1.png).
PNG, JPEG and GIF files are served. Captions that lack an image in some
method's folder are left out, and the server logs how many and which.

The server listens on 127.0.0.1 only and uses the Python standard library.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import html
import logging
import os
import random
import re
import secrets
import signal
import sys
import threading
import urllib.parse
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOST = "127.0.0.1"
CSV_FIELDS = ("rater_id", "caption_id", "method", "slot", "order", "quality_rank",
              "correlation_rank", "timestamp")
IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
               ".gif": "image/gif"}
RATER_PATTERN = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
METHOD_PATTERN = re.compile(r"^[A-Za-z0-9_.+-]{1,64}$")
MAX_FORM_BYTES = 16 * 1024
# Pages shown but not yet answered; the oldest are forgotten beyond this count.
MAX_OPEN_PAGES = 10_000

log = logging.getLogger("human_rank")


class SetupError(ValueError):
    """Invalid command-line input: methods, captions or output file."""


def parse_methods(text: str) -> list[tuple[str, str]]:
    """Parse "name1:DIR1,name2:DIR2" into [(name, dir)], checking names and folders."""
    methods = []
    for part in filter(None, (item.strip() for item in text.split(","))):
        name, separator, folder = part.partition(":")
        if not separator or not folder:
            raise SetupError(f"--methods entry {part!r} has no folder; write NAME:DIR.")
        if not METHOD_PATTERN.match(name):
            raise SetupError(f"Method name {name!r} is invalid; use 1-64 letters, digits, "
                             "'_', '.', '+' or '-'.")
        if not os.path.isdir(folder):
            raise SetupError(f"Image folder {folder!r} of method {name!r} not found.")
        methods.append((name, folder))
    names = [name for name, _ in methods]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise SetupError(f"Method names must be unique; repeated: {', '.join(duplicates)}.")
    if len(methods) < 2:
        raise SetupError(f"--methods needs at least two NAME:DIR entries to rank, got "
                         f"{len(methods)}.")
    return methods


def read_captions(path: str) -> list[tuple[int, str]]:
    """Return [(caption_id, text)] with ids 1, 2, ... over the non-blank lines of a UTF-8 file."""
    if not os.path.isfile(path):
        raise SetupError(f"Captions file {path!r} not found.")
    with open(path, encoding="utf-8") as file:
        lines = [line.strip() for line in file]
    captions = [text for text in lines if text]
    if not captions:
        raise SetupError(f"Captions file {path!r} has no captions; write one per line.")
    return list(enumerate(captions, start=1))


def index_images(folder: str) -> dict[int, str]:
    """Map caption ids to image paths in one method folder ("0001.png" or "0001_1.png")."""
    found: dict[int, str] = {}
    for name in sorted(os.listdir(folder)):
        stem, extension = os.path.splitext(name)
        if extension.lower() not in IMAGE_TYPES:
            continue
        match = re.fullmatch(r"(\d+)(_1)?", stem)
        if not match:
            continue
        caption_id = int(match.group(1))
        # A plain "0001.png" wins over the diverse-synthesis "0001_1.png".
        if caption_id not in found or not match.group(2):
            found[caption_id] = os.path.join(folder, name)
    return found


def match_images(methods, captions):
    """Return (captions that every method has an image for, {(method index, caption id): path})."""
    images = {}
    usable = []
    missing = []
    indexes = [index_images(folder) for _, folder in methods]
    for caption_id, text in captions:
        lacking = [methods[m][0] for m, index in enumerate(indexes) if caption_id not in index]
        if lacking:
            missing.append((caption_id, lacking))
            continue
        usable.append((caption_id, text))
        for m, index in enumerate(indexes):
            images[(m, caption_id)] = index[caption_id]
    if missing:
        listed = "; ".join(f"caption {cid}: no image from {', '.join(names)}"
                           for cid, names in missing[:5])
        log.warning("Left out %d of %d captions that lack an image (%s%s).", len(missing),
                    len(captions), listed, "; ..." if len(missing) > 5 else "")
    if not usable:
        raise SetupError("No caption has an image from every method. Name each image after "
                         "its caption's line number, as sdn-generate does (0001.png).")
    return usable, images


def read_answered(path: str) -> set[tuple[str, int]]:
    """Return the (rater_id, caption_id) pairs already in the CSV, checking its header."""
    if not os.path.exists(path):
        return set()
    with open(path, newline="", encoding="utf-8") as file:
        reader = csv.DictReader(file)
        if reader.fieldnames is None:
            return set()
        if tuple(reader.fieldnames) != CSV_FIELDS:
            raise SetupError(f"{path!r} has columns {reader.fieldnames}, not those of this "
                             f"kit {list(CSV_FIELDS)}; pass another --out.")
        return {(row["rater_id"], int(row["caption_id"])) for row in reader}


class RankingStore:
    """Captions, images, shown pages and the answers CSV, shared by the request threads."""

    def __init__(self, methods, captions, images, out_path: str, seed=None):
        self.methods = methods
        self.captions = captions
        self.caption_text = dict(captions)
        self.images = images
        self.out_path = out_path
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.answered = read_answered(out_path)
        self.pages: dict[str, tuple[str, int, list[int]]] = {}

    def next_caption(self, rater: str):
        """Return the first caption this rater has not ranked, or None when all are done."""
        with self.lock:
            for caption_id, text in self.captions:
                if (rater, caption_id) not in self.answered:
                    return caption_id, text
        return None

    def count_answered(self, rater: str) -> int:
        with self.lock:
            return sum(1 for caption_id, _ in self.captions
                       if (rater, caption_id) in self.answered)

    def open_page(self, rater: str, caption_id: int) -> tuple[str, list[int]]:
        """Draw a random method order for one page and return (token, order)."""
        with self.lock:
            order = list(range(len(self.methods)))
            self.random.shuffle(order)
            token = secrets.token_urlsafe(12)
            self.pages[token] = (rater, caption_id, order)
            while len(self.pages) > MAX_OPEN_PAGES:
                self.pages.pop(next(iter(self.pages)))
        return token, order

    def image_path(self, token: str, slot: int):
        with self.lock:
            page = self.pages.get(token)
        if page is None or not 0 <= slot < len(self.methods):
            return None
        return self.images[(page[2][slot], page[1])]

    def save_answer(self, token: str, quality: list[int], correlation: list[int]) -> str:
        """Append one row per method for a ranked page; return the rater id.

        quality[s] and correlation[s] are the ranks given to the image in slot s.

        Raises:
          ValueError: the page is unknown or already answered, or the ranks are not
            a permutation of 1..number of methods.
        """
        count = len(self.methods)
        for name, ranks in (("quality", quality), ("text correlation", correlation)):
            if sorted(ranks) != list(range(1, count + 1)):
                raise ValueError(f"The {name} ranks {ranks} must use each rank from 1 to "
                                 f"{count} once; go back and correct them.")
        with self.lock:
            page = self.pages.get(token)
            if page is None:
                raise ValueError("This page is unknown or expired (the server restarted); "
                                 "go back to the start page and rank the caption again.")
            rater, caption_id, order = page
            if (rater, caption_id) in self.answered:
                raise ValueError(f"Rater {rater!r} has already ranked caption {caption_id}; "
                                 "each caption is ranked once per rater.")
            timestamp = datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds")
            order_names = "|".join(self.methods[m][0] for m in order)
            new_file = not os.path.exists(self.out_path) or os.path.getsize(self.out_path) == 0
            with open(self.out_path, "a", newline="", encoding="utf-8") as file:
                writer = csv.writer(file)
                if new_file:
                    writer.writerow(CSV_FIELDS)
                for slot, method in enumerate(order):
                    writer.writerow([rater, caption_id, self.methods[method][0], slot,
                                     order_names, quality[slot], correlation[slot], timestamp])
                file.flush()
                os.fsync(file.fileno())
            self.answered.add((rater, caption_id))
            del self.pages[token]
        log.info("Saved the ranking of caption %d by rater %s (order %s).", caption_id, rater,
                 order_names)
        return rater


# --- Pages -----------------------------------------------------------------------

STYLE = """
body { font-family: sans-serif; margin: 2em; max-width: 70em; }
.caption { font-size: 1.3em; margin: 1em 0; padding: 0.5em; background: #f2f2f2; }
.images { display: flex; flex-wrap: wrap; gap: 1.5em; }
.slot { text-align: center; }
.slot img { width: 256px; height: 256px; image-rendering: pixelated; border: 1px solid #999; }
label { display: block; margin-top: 0.4em; }
.error { color: #a00; font-weight: bold; }
button { margin-top: 1.5em; font-size: 1.1em; }
"""


def _page(title: str, body: str) -> bytes:
    return (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>"
            f"<body><h1>{html.escape(title)}</h1>{body}</body></html>").encode("utf-8")


def start_page() -> bytes:
    return _page("Rank generated images", """
<p>You will see a caption and one image from each of several methods, in random order.
Rank the images twice: by image quality, and by how well the image matches the caption.
Rank 1 is the best; use each rank once.</p>
<form method="get" action="/">
<label>Your rater id (letters, digits, _ . @ -):
<input id="rater" name="rater" required pattern="[A-Za-z0-9_.@\\-]{1,64}"></label>
<button id="start" type="submit">Start</button>
</form>""")


def rank_page(store: RankingStore, rater: str, caption_id: int, text: str) -> bytes:
    token, _ = store.open_page(rater, caption_id)
    count = len(store.methods)
    options = "<option value=\"\">-</option>" + "".join(
        f"<option value=\"{rank}\">{rank}</option>" for rank in range(1, count + 1))
    slots = []
    for slot in range(count):
        letter = chr(ord("A") + slot) if slot < 26 else str(slot + 1)
        slots.append(
            f"<div class=\"slot\"><img id=\"image_{slot}\" src=\"/image/{token}/{slot}\" "
            f"alt=\"Image {letter}\"><div>Image {letter}</div>"
            f"<label>Quality rank <select name=\"quality_{slot}\" required>{options}"
            f"</select></label>"
            f"<label>Text correlation rank <select name=\"correlation_{slot}\" required>"
            f"{options}</select></label></div>")
    done = store.count_answered(rater)
    return _page("Rank generated images", f"""
<p>Rater <b>{html.escape(rater)}</b>, caption {done + 1} of {len(store.captions)}.
Rank 1 is the best; use each rank once per question.</p>
<div class="caption" id="caption">{html.escape(text)}</div>
<form method="post" action="/answer">
<input type="hidden" name="token" value="{token}">
<div class="images">{''.join(slots)}</div>
<button id="submit" type="submit">Submit ranking</button>
</form>""")


def done_page(store: RankingStore, rater: str) -> bytes:
    return _page("Thank you", f"<p id=\"done\">Rater <b>{html.escape(rater)}</b> has ranked "
                              f"all {len(store.captions)} captions.</p>")


def error_page(message: str) -> bytes:
    return _page("Ranking not saved", f"<p class=\"error\" id=\"error\">{html.escape(message)}"
                                      "</p><p><a href=\"javascript:history.back()\">Back</a>"
                                      " | <a href=\"/\">Start page</a></p>")


class RankHandler(BaseHTTPRequestHandler):
    """Routes: GET / (start or next caption), GET /image/TOKEN/SLOT, POST /answer."""

    store: RankingStore  # set on the subclass that make_server builds
    server_version = "HumanRank/1.0"

    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        log.info("%s %s", self.address_string(), format % args)

    def _send(self, status: HTTPStatus, body: bytes, content_type: str = "text/html; "
              "charset=utf-8", headers=None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # noqa: N802 - http.server's naming
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/":
            rater = urllib.parse.parse_qs(url.query).get("rater", [""])[0].strip()
            if not rater:
                self._send(HTTPStatus.OK, start_page())
            elif not RATER_PATTERN.match(rater):
                self._send(HTTPStatus.BAD_REQUEST, error_page(
                    f"Rater id {rater!r} is invalid; use 1-64 letters, digits, _ . @ or -."))
            else:
                following = self.store.next_caption(rater)
                if following is None:
                    self._send(HTTPStatus.OK, done_page(self.store, rater))
                else:
                    self._send(HTTPStatus.OK, rank_page(self.store, rater, *following))
            return
        match = re.fullmatch(r"/image/([A-Za-z0-9_-]+)/(\d+)", url.path)
        if match:
            path = self.store.image_path(match.group(1), int(match.group(2)))
            if path is None:
                self._send(HTTPStatus.NOT_FOUND, error_page("Image not found; reload the page."))
                return
            with open(path, "rb") as file:
                data = file.read()
            self._send(HTTPStatus.OK, data, IMAGE_TYPES[os.path.splitext(path)[1].lower()])
            return
        self._send(HTTPStatus.NOT_FOUND, error_page(f"No page at {url.path}."))

    def do_POST(self):  # noqa: N802 - http.server's naming
        if urllib.parse.urlsplit(self.path).path != "/answer":
            self._send(HTTPStatus.NOT_FOUND, error_page(f"No form at {self.path}."))
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_FORM_BYTES:
            self._send(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                       error_page(f"The form has {length} bytes; at most {MAX_FORM_BYTES}."))
            return
        form = urllib.parse.parse_qs(self.rfile.read(length).decode("utf-8", "replace"))
        try:
            quality, correlation = self._ranks(form)
            rater = self.store.save_answer(form.get("token", [""])[0], quality, correlation)
        except ValueError as error:
            log.warning("Rejected a ranking: %s", error)
            self._send(HTTPStatus.BAD_REQUEST, error_page(str(error)))
            return
        location = "/?" + urllib.parse.urlencode({"rater": rater})
        self._send(HTTPStatus.SEE_OTHER, b"", headers={"Location": location})

    def _ranks(self, form) -> tuple[list[int], list[int]]:
        count = len(self.store.methods)
        result = []
        for field, name in (("quality", "quality"), ("correlation", "text correlation")):
            ranks = []
            for slot in range(count):
                value = form.get(f"{field}_{slot}", [""])[0]
                if not value.isdigit():
                    raise ValueError(f"Choose a {name} rank for image {slot + 1}; got "
                                     f"{value!r}.")
                ranks.append(int(value))
            result.append(ranks)
        return result[0], result[1]


def make_server(store: RankingStore, port: int) -> ThreadingHTTPServer:
    """Bind a server for `store` to 127.0.0.1:port (0 picks a free port)."""
    handler = type("BoundRankHandler", (RankHandler,), {"store": store})
    return ThreadingHTTPServer((HOST, port), handler)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", required=True,
                        help="Methods to compare as NAME:DIR pairs separated by commas.")
    parser.add_argument("--captions", required=True,
                        help="UTF-8 file with one caption per line; caption i is line i.")
    parser.add_argument("--port", type=int, default=8765,
                        help="TCP port on 127.0.0.1 (0 picks a free one; default 8765).")
    parser.add_argument("--out", default="answers.csv",
                        help="CSV file the answers are appended to (default answers.csv).")
    parser.add_argument("--seed", type=int, default=None,
                        help="Seed of the random image order (default: a fresh one).")
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error(f"--port={args.port} must be from 0 to 65535.")
    return args


def _stop_on_signal(signum, frame):
    # Ends serve_forever in the main thread, the same way Ctrl+C does.
    raise KeyboardInterrupt


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = parse_args(argv)
    try:
        methods = parse_methods(args.methods)
        captions, images = match_images(methods, read_captions(args.captions))
        store = RankingStore(methods, captions, images, args.out, args.seed)
        server = make_server(store, args.port)
    except (SetupError, OSError) as error:
        log.error("%s", error)
        return 2
    url = f"http://{HOST}:{server.server_address[1]}/"
    log.info("%d methods, %d captions, answers appended to %s.", len(methods), len(captions),
             os.path.abspath(args.out))
    # The first line on stdout is the address, so scripts using --port=0 can read it.
    print(f"Serving on {url}", flush=True)
    signal.signal(signal.SIGTERM, _stop_on_signal)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        log.info("Stopped.")
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
