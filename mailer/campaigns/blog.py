"""The clinic's blog: its RSS or Atom feed read safely (http/https only, public addresses
only unless allowed, size and time limits, the resolved address is the one connected to),
parsed with feedparser and cached as BlogPost rows; the posts an issue shows (`new_posts`)
and the Markdown of the ready block and of a digest issue."""
from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import http.client
import io
import ipaddress
import re
import socket
import ssl
import time
from html import unescape
from urllib.parse import urljoin, urlsplit

import feedparser
import nh3
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from mailer.db import dialect_insert, session_scope
from mailer.models import BlogFeed, BlogPost, MailingList, Newsletter, NewsletterStatus, newsletter_lists

FEED_REFRESH = dt.timedelta(minutes=15)  # how old the cached posts may get before the worker reads the feed again
MAX_REDIRECTS = 3
NEW_POSTS_LIMIT = 5
SUMMARY_MAX = 300
TITLE_MAX = 300
URL_MAX = 2000
REDIRECTS = {301, 302, 303, 307, 308}
USER_AGENT = "mailer-feed-reader/1.0 (newsletter; reads the blog's feed)"
# Issues that went out (or are going out): what "since the previous issue" counts from.
STARTED = (NewsletterStatus.SENDING, NewsletterStatus.PAUSED, NewsletterStatus.SENT)

# The ready block: `{{ blog_posts() }}` on a line of its own in a newsletter's body stands
# for this Markdown (newsletters.expand_blocks), so it renders like anything staff write.
BLOG_POSTS_BLOCK = """{% for post in new_posts %}
### [{{ post.title }}]({{ post.link }})

{% if post.image %}
![{{ post.title }}]({{ post.image }})

{% endif %}
{{ post.summary }}

[Read the post]({{ post.link }}) · {{ post.published }}

{% endfor %}"""


class FeedError(Exception):
    """The feed could not be read or used; the message is for staff."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


@dataclasses.dataclass(frozen=True)
class Post:
    key: str
    title: str
    link: str
    summary: str
    image: str | None
    published_at: dt.datetime


@dataclasses.dataclass(frozen=True)
class FeedCheck:
    """What one read of the feed found: posts, or the error staff see."""

    posts: tuple[Post, ...] = ()
    error: str | None = None


# The address -----------------------------------------------------------------------------

def check_url(url: str) -> str:
    """A feed address staff may give: http or https, with a host. ValueError says why not."""
    url = (url or "").strip()
    if not url:
        return ""
    if len(url) > URL_MAX or any(ch.isspace() for ch in url):
        raise ValueError("Give the feed's address without spaces, e.g. https://clinic.example/blog/feed.xml.")
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https"):
        raise ValueError("The feed's address must start with https:// (or http://).")
    try:
        parts.port
    except ValueError:
        raise ValueError("The port in the feed's address is not a number from 1 to 65535.") from None
    if not parts.hostname:
        raise ValueError("The feed's address has no host, e.g. https://clinic.example/blog/feed.xml.")
    if parts.username or parts.password:
        raise ValueError("The feed's address may not hold a user name or password.")
    return url


def allowed_private(setting: str) -> bool | tuple:
    """MAILER_FEED_ALLOW_PRIVATE: "" none, "1" (true, yes, all) any non-public address, or a
    comma-separated list of addresses and networks ("127.0.0.1, 10.0.0.0/8")."""
    text = (setting or "").strip().lower()
    if text in ("", "0", "false", "no"):
        return False
    if text in ("1", "true", "yes", "all"):
        return True
    networks = []
    for part in text.replace(" ", ",").split(","):
        if part:
            try:
                networks.append(ipaddress.ip_network(part, strict=False))
            except ValueError:
                raise FeedError(f"MAILER_FEED_ALLOW_PRIVATE holds {part!r}, which is not an address or "
                                "network; give e.g. 127.0.0.1 or 10.0.0.0/8, or 1 for any.") from None
    return tuple(networks)


def _refused(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, allow_private: bool | tuple) -> str | None:
    """Why this address may not be connected to (None: it may). IPv4-mapped IPv6
    (::ffff:127.0.0.1) is judged as the IPv4 address it is. `allow_private`: True allows
    every non-public address, a tuple of networks those in them."""
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_unspecified or ip.is_multicast:
        return "an unspecified or multicast address"
    if allow_private is True or (allow_private and any(ip in net for net in allow_private if net.version == ip.version)):
        return None
    for test, what in ((ip.is_loopback, "a loopback address"), (ip.is_link_local, "a link-local address"),
                       (ip.is_private, "a private address"), (ip.is_reserved, "a reserved address")):
        if test:
            return what
    if not ip.is_global:
        return "not a public address"
    return None


def resolve(host: str, port: int, *, allow_private: bool | tuple) -> str:
    """The address to connect to for `host`: one of its addresses that is public (or, with
    allow_private, any usable one). FeedError names the refused address."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise FeedError(f"The blog's host {host} cannot be found "
                        f"({getattr(exc, 'strerror', None) or 'not a valid host name'}).") from None
    refusals = []
    for info in infos:
        address = info[4][0].split("%", 1)[0]  # an IPv6 zone index is not part of the address
        ip = ipaddress.ip_address(address)
        why = _refused(ip, allow_private)
        if why is None:
            return address
        refusals.append(f"{address} is {why}")
    raise FeedError(f"The feed is not read from {host}: {'; '.join(dict.fromkeys(refusals))}. Feeds are read "
                    "only from public addresses (MAILER_FEED_ALLOW_PRIVATE allows private ones: 1 for any, "
                    "or the addresses allowed).")


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """HTTP to the address checked, whatever the name resolves to by the time we connect."""

    def __init__(self, host: str, address: str, port: int, timeout: float):
        super().__init__(host, port, timeout=timeout)
        self.address = address

    def connect(self):
        self.sock = socket.create_connection((self.address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to the address checked; the certificate is verified for the host name."""

    def __init__(self, host: str, address: str, port: int, timeout: float):
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self.address = address

    def connect(self):
        sock = socket.create_connection((self.address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def fetch_feed(url: str, *, allow_private: bool | tuple = False, max_bytes: int = 2_000_000,
               timeout: float = 10.0) -> bytes:
    """The feed's bytes (does network I/O). Every hop (at most MAX_REDIRECTS redirects) is
    checked like the first: http or https, a public address, connected to as resolved.
    The whole read, redirects included, takes at most `timeout` seconds and `max_bytes`."""
    deadline = time.monotonic() + timeout
    for _hop in range(MAX_REDIRECTS + 1):
        try:
            check_url(url)
        except ValueError as exc:
            raise FeedError(str(exc)) from None
        parts = urlsplit(url)
        scheme, host = parts.scheme.lower(), parts.hostname
        port = parts.port or (443 if scheme == "https" else 80)
        address = resolve(host, port, allow_private=allow_private)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _too_slow(timeout)
        cls = _PinnedHTTPSConnection if scheme == "https" else _PinnedHTTPConnection
        connection = cls(host, address, port, remaining)
        try:
            connection.request("GET", (parts.path or "/") + (f"?{parts.query}" if parts.query else ""), headers={
                "User-Agent": USER_AGENT, "Accept-Encoding": "identity",
                "Accept": "application/rss+xml, application/atom+xml, application/xml;q=0.9, text/xml;q=0.9, */*;q=0.1"})
            response = connection.getresponse()
            if response.status in REDIRECTS and response.getheader("Location"):
                url = urljoin(url, response.getheader("Location").strip())
                continue
            if response.status != 200:
                raise FeedError(f"The blog's server answered HTTP {response.status} {response.reason} for the feed.")
            length = response.getheader("Content-Length")
            if length and length.isdigit() and int(length) > max_bytes:
                raise _too_big(max_bytes)
            return _read_body(connection, response, max_bytes, deadline, timeout)
        except (TimeoutError, socket.timeout):
            raise _too_slow(timeout) from None
        except ssl.SSLError as exc:
            raise FeedError(f"The secure connection to {host} failed: {exc.reason or exc}.") from None
        except (http.client.HTTPException, OSError) as exc:
            raise FeedError(f"The blog's server at {host} could not be read: "
                            f"{getattr(exc, 'strerror', None) or exc.__class__.__name__}.") from None
        finally:
            connection.close()
    raise FeedError(f"The feed's address redirects more than {MAX_REDIRECTS} times.")


def _read_body(connection, response, max_bytes: int, deadline: float, timeout: float) -> bytes:
    body = bytearray()
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _too_slow(timeout)
        if connection.sock is not None:
            connection.sock.settimeout(remaining)  # a server dripping bytes cannot stretch the read
        chunk = response.read1(65536)
        if not chunk:
            return bytes(body)
        body += chunk
        if len(body) > max_bytes:
            raise _too_big(max_bytes)


def _too_slow(timeout: float) -> FeedError:
    return FeedError(f"The blog's server did not send the feed within {timeout:g} seconds.")


def _too_big(max_bytes: int) -> FeedError:
    return FeedError(f"The feed is larger than {max_bytes:,} bytes, the most that is read.")


# Parsing -------------------------------------------------------------------------------

def text_of(html: str) -> str:
    """Readable text of a bit of HTML: tags (and scripts with their content) dropped,
    entities decoded, whitespace made single spaces."""
    return " ".join(unescape(nh3.clean(html or "", tags=set())).split())


def _shorten(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    cut = text[:limit - 1].rsplit(" ", 1)[0] if " " in text[:limit - 1] else text[:limit - 1]
    return cut.rstrip(" ,.;:") + "…"


def _web_url(url: str | None) -> str | None:
    url = (url or "").strip()
    parts = urlsplit(url)
    if parts.scheme.lower() in ("http", "https") and parts.hostname and len(url) <= URL_MAX \
            and not any(ch.isspace() for ch in url):
        return url
    return None


_IMG_SRC = re.compile(r"<img\b[^>]*?\bsrc\s*=\s*[\"']([^\"']+)[\"']", re.IGNORECASE)


def _image(entry, feed_url: str, link: str) -> str | None:
    """The post's picture (media:content, media:thumbnail, an image enclosure, or the
    first <img> of its content) when it is https and on the blog's own site (the feed's
    host or the post's): readers' mail loads no image from elsewhere."""
    candidates = [m.get("url") for m in entry.get("media_content", [])
                  if m.get("medium", "image") == "image" and m.get("type", "image/").startswith("image/")]
    candidates += [m.get("url") for m in entry.get("media_thumbnail", [])]
    candidates += [e.get("href") for e in entry.get("enclosures", []) if (e.get("type") or "").startswith("image/")]
    for content in [*entry.get("content", []), {"value": entry.get("summary", "")}]:
        candidates += _IMG_SRC.findall(content.get("value") or "")
    own = {urlsplit(feed_url).hostname, urlsplit(link).hostname}
    for candidate in candidates:
        url = _web_url(urljoin(link, unescape(candidate or "")))
        if url and urlsplit(url).scheme.lower() == "https" and urlsplit(url).hostname in own:
            return url
    return None


def parse_feed(data: bytes, feed_url: str, *, now: dt.datetime) -> list[Post]:
    """The posts of an RSS or Atom document, newest first. feedparser reads the bytes only
    (it is never given a URL, so it fetches nothing). A post without a web link is left
    out; one without a date counts as published `now` (the first time it is seen)."""
    parsed = feedparser.parse(io.BytesIO(data), response_headers={"content-location": feed_url})
    if not parsed.entries and (parsed.bozo or not parsed.get("version")):
        raise FeedError("This address does not serve an RSS or Atom feed"
                        + (f" ({text_of(str(parsed.get('bozo_exception', '')))[:120]})" if parsed.bozo else "")
                        + ". Give the address of the blog's feed (often /feed or /rss.xml).")
    posts = {}
    for entry in parsed.entries:
        link = _web_url(entry.get("link"))
        if link is None:
            continue
        title = _shorten(text_of(entry.get("title", "")), TITLE_MAX) or link
        when = entry.get("published_parsed") or entry.get("updated_parsed")
        published = dt.datetime(*when[:6], tzinfo=dt.timezone.utc) if when else now
        key = hashlib.sha256(f"{feed_url}\n{entry.get('id') or link}".encode()).hexdigest()
        posts.setdefault(key, Post(key, title, link, _shorten(text_of(entry.get("summary", "")), SUMMARY_MAX),
                                   _image(entry, feed_url, link), published))
    return sorted(posts.values(), key=lambda p: p.published_at, reverse=True)


# The cache -----------------------------------------------------------------------------

def _feed_row(session: Session) -> BlogFeed:
    session.execute(dialect_insert(session, BlogFeed).values(id=1, url="").on_conflict_do_nothing(
        index_elements=["id"]))
    return session.get(BlogFeed, 1)


def claim_refresh(session: Session, url: str, now: dt.datetime) -> bool:
    """Whether this worker reads the feed now: the cache is older than FEED_REFRESH (or
    was filled from another address). A compare-and-set, so two workers read it once."""
    _feed_row(session)
    return bool(session.execute(sa.update(BlogFeed).where(
        BlogFeed.id == 1,
        sa.or_(BlogFeed.checked_at.is_(None), BlogFeed.checked_at <= now - FEED_REFRESH, BlogFeed.url != url),
    ).values(checked_at=now, url=url).execution_options(synchronize_session=False)).rowcount)


def store_posts(session: Session, url: str, posts: list[Post], now: dt.datetime) -> None:
    """Keep the posts read from `url` (posts of an earlier address are dropped); a post
    seen again keeps its first publication time, its text is updated."""
    feed = _feed_row(session)
    if feed.url != url:
        session.execute(sa.delete(BlogPost))
    feed.url, feed.checked_at, feed.error = url, now, None
    for post in posts:
        values = dict(title=post.title, link=post.link, summary=post.summary, image_url=post.image)
        session.execute(dialect_insert(session, BlogPost).values(
            post_key=post.key, published_at=post.published_at, fetched_at=now, **values,
        ).on_conflict_do_update(index_elements=["post_key"], set_=values))


def record_error(session: Session, url: str, message: str, now: dt.datetime) -> None:
    feed = _feed_row(session)
    if feed.url != url:
        session.execute(sa.delete(BlogPost))
    feed.url, feed.checked_at, feed.error = url, now, message[:500]


def read_feed(settings, url: str | None = None, *, now: dt.datetime) -> FeedCheck:
    """Fetch and parse the feed (network I/O, no database)."""
    url = url if url is not None else settings.blog_feed_url
    if not url:
        return FeedCheck(error="No blog feed is set: give its address on the settings page.")
    try:
        data = fetch_feed(url, allow_private=allowed_private(settings.feed_allow_private),
                          max_bytes=settings.feed_max_bytes, timeout=settings.feed_timeout_seconds)
        return FeedCheck(posts=tuple(parse_feed(data, url, now=now)))
    except FeedError as exc:
        return FeedCheck(error=exc.message)


def refresh(sessions: sessionmaker, settings, *, now: dt.datetime, force: bool = False) -> FeedCheck | None:
    """Read the feed into the cache when it is due (the worker's job) or at once (`force`:
    "Check the feed now"). None when no feed is set or the cache is fresh. The feed is read
    outside any transaction, so a slow blog holds no database lock."""
    url = settings.blog_feed_url
    if not url:
        return None
    if not force:
        with session_scope(sessions) as session:
            if not claim_refresh(session, url, now):
                return None
    found = read_feed(settings, url, now=now)
    with session_scope(sessions) as session:
        if found.error:
            record_error(session, url, found.error, now)
        else:
            store_posts(session, url, list(found.posts), now)
    return found


def feed_state(session: Session) -> BlogFeed | None:
    return session.get(BlogFeed, 1)


# What an issue shows -------------------------------------------------------------------

def previous_issue_start(session: Session, *, newsletter_id: int | None = None, rhythm_id: int | None = None,
                         list_slugs=None, list_ids=None, before: dt.datetime | None = None) -> dt.datetime | None:
    """When the previous issue of the rhythm (or, for an issue outside a rhythm, of any of
    its lists) started going out; None when there is none."""
    stmt = sa.select(sa.func.max(Newsletter.started_at)).where(Newsletter.status.in_(STARTED),
                                                                Newsletter.started_at.is_not(None))
    if newsletter_id is not None:
        stmt = stmt.where(Newsletter.id != newsletter_id)
    if before is not None:
        stmt = stmt.where(Newsletter.started_at < before)
    if rhythm_id is not None:
        stmt = stmt.where(Newsletter.rhythm_id == rhythm_id)
    elif list_ids:
        stmt = stmt.where(sa.exists().where(newsletter_lists.c.newsletter_id == Newsletter.id,
                                            newsletter_lists.c.list_id.in_(list_ids)))
    elif list_slugs:
        stmt = stmt.where(sa.exists().where(newsletter_lists.c.newsletter_id == Newsletter.id,
                                            newsletter_lists.c.list_id == MailingList.id,
                                            MailingList.slug.in_(list_slugs)))
    else:
        return None
    return session.scalar(stmt)


def posts_between(session: Session, since: dt.datetime | None, until: dt.datetime,
                  limit: int = NEW_POSTS_LIMIT) -> list[BlogPost]:
    stmt = sa.select(BlogPost).where(BlogPost.published_at <= until)
    if since is not None:
        stmt = stmt.where(BlogPost.published_at > since)
    return list(session.scalars(stmt.order_by(BlogPost.published_at.desc(), BlogPost.id.desc()).limit(limit)))


def post_context(post: BlogPost, zone) -> dict:
    """A post as templates see it: new_posts items."""
    day = post.published_at.astimezone(zone)
    return {"title": post.title, "link": post.link, "summary": post.summary, "image": post.image_url or "",
            "published": f"{day.day} {day:%B %Y}"}


def posts_for_issue(session: Session, settings, newsletter: Newsletter | None = None, *, now: dt.datetime,
                    list_slugs=None) -> list[dict]:
    """`new_posts` of an issue: the blog's posts published since the previous issue of its
    rhythm (or of its lists), up to the moment it started going out (now, before that),
    newest first, at most NEW_POSTS_LIMIT. Without an issue or lists (a sequence's step):
    the newest posts. The send and every preview use this same function."""
    if not settings.blog_feed_url:
        return []
    until = newsletter.started_at if newsletter is not None and newsletter.started_at else now
    if newsletter is not None:
        since = previous_issue_start(session, newsletter_id=newsletter.id, rhythm_id=newsletter.rhythm_id,
                                     list_ids=[ml.id for ml in newsletter.lists], before=until)
    else:
        since = previous_issue_start(session, list_slugs=list_slugs, before=until)
    return [post_context(post, settings.zone) for post in posts_between(session, since, until)]


def digest_text(posts: list[dict]) -> tuple[str, str]:
    """Subject and Markdown body of a digest issue drafted from new posts (their list is
    the ready block, filled in at send time)."""
    first = posts[0]["title"]
    subject = f"New on our blog: {first}" + (f" and {len(posts) - 1} more" if len(posts) > 1 else "")
    if len(subject) > 300:
        subject = _shorten(subject, 300)
    body = ("Hello {{ contact.first_name or 'there' }},\n\n"
            "Here is what we have published on our blog since our last newsletter:\n\n"
            "{{ blog_posts() }}\n")
    return subject, body
