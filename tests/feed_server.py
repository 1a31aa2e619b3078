"""A blog for the tests: RSS and Atom feeds (and misbehaving answers) served over real
HTTP by http.server in a thread on 127.0.0.1."""
from __future__ import annotations

import datetime as dt
import threading
import time
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from xml.sax.saxutils import escape

UTC = dt.timezone.utc


def rss(items: list[dict], title: str = "Spine & Motion blog") -> bytes:
    """An RSS 2.0 document; each item: title, link, summary, published (aware), and
    optionally image (media:content) and enclosure (an image enclosure's URL)."""
    parts = [f'<?xml version="1.0" encoding="utf-8"?>\n<rss version="2.0" '
             f'xmlns:media="http://search.yahoo.com/mrss/"><channel><title>{escape(title)}</title>'
             '<link>https://clinic.example/blog</link><description>Posts</description>']
    for item in items:
        parts.append(f"<item><title>{escape(item['title'])}</title><link>{escape(item['link'])}</link>"
                     f"<guid>{escape(item.get('guid', item['link']))}</guid>"
                     f"<pubDate>{format_datetime(item['published'])}</pubDate>"
                     f"<description>{escape(item.get('summary', ''))}</description>")
        if item.get("image"):
            parts.append(f'<media:content url="{escape(item["image"])}" medium="image"/>')
        if item.get("enclosure"):
            parts.append(f'<enclosure url="{escape(item["enclosure"])}" type="image/jpeg" length="100"/>')
        parts.append("</item>")
    parts.append("</channel></rss>")
    return "".join(parts).encode()


def atom(items: list[dict], title: str = "Spine & Motion blog") -> bytes:
    parts = ['<?xml version="1.0" encoding="utf-8"?>\n<feed xmlns="http://www.w3.org/2005/Atom">'
             f'<title>{escape(title)}</title><id>urn:clinic:blog</id><updated>2026-01-01T00:00:00Z</updated>']
    for item in items:
        parts.append(f"<entry><title>{escape(item['title'])}</title><link href=\"{escape(item['link'])}\"/>"
                     f"<id>{escape(item.get('guid', item['link']))}</id>"
                     f"<updated>{item['published'].astimezone(UTC):%Y-%m-%dT%H:%M:%SZ}</updated>"
                     f"<summary type=\"html\">{escape(item.get('summary', ''))}</summary></entry>")
    parts.append("</feed>")
    return "".join(parts).encode()


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.server.requests.append(self.path)
        route = self.server.routes.get(self.path)
        if route is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        route(self)

    def log_message(self, *args):
        pass


class FeedServer:
    """routes: path → a function of the request handler that writes the answer; helpers
    below make the usual ones."""

    def __init__(self, tls: tuple[str, str] | None = None):
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.scheme = "http"
        if tls is not None:  # (certificate file, key file): serve https
            import ssl
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            self.scheme = "https"
        self.server.daemon_threads = True
        self.server.routes = {}
        self.server.requests = []
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def url(self, path: str) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"

    @property
    def requests(self) -> list[str]:
        return self.server.requests

    def start(self) -> "FeedServer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def serve(self, path: str, body: bytes, content_type: str = "application/rss+xml", *,
              length: bool = True) -> None:
        def answer(handler):
            handler.send_response(200)
            handler.send_header("Content-Type", content_type)
            if length:
                handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            handler.wfile.write(body)
            if not length:
                handler.close_connection = True
        self.server.routes[path] = answer

    def redirect(self, path: str, location: str) -> None:
        def answer(handler):
            handler.send_response(302)
            handler.send_header("Location", location)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
        self.server.routes[path] = answer

    def stall(self, path: str, seconds: float) -> None:
        """Say nothing for `seconds`, then answer."""
        def answer(handler):
            time.sleep(seconds)
            handler.send_response(200)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
        self.server.routes[path] = answer

    def drip(self, path: str, seconds: float, every: float = 0.2) -> None:
        """Answer at once, then a byte every `every` seconds for `seconds` (each read is quick:
        only a limit on the whole read stops it)."""
        def answer(handler):
            handler.send_response(200)
            handler.send_header("Content-Type", "application/rss+xml")
            handler.end_headers()
            handler.close_connection = True
            end = time.monotonic() + seconds
            try:
                while time.monotonic() < end:
                    handler.wfile.write(b" ")
                    handler.wfile.flush()
                    time.sleep(every)
            except OSError:
                pass  # the reader gave up
        self.server.routes[path] = answer
