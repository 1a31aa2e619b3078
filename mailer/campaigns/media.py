"""The media library: images staff upload for newsletters. Every upload is decoded and
re-encoded by Pillow, so what is stored and served is only pixels (no EXIF, GPS, XMP,
ICC profile, comments, or bytes appended to the file), no wider than MAX_WIDTH, and kept
in the database so every host serves it from our own origin at /media/<key>.<ext>."""
from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import io
import re
import secrets
import unicodedata
import warnings

import sqlalchemy as sa
from PIL import Image, ImageOps, ImageSequence
from sqlalchemy.orm import Session

from mailer.errors import Conflict, InvalidInput, NotFound
from mailer.models import MediaImage, Newsletter, NewsletterStatus, Sequence, SequenceStatus, SequenceStep

# Stored at most this wide: twice the 600 px column of our email layout, so images are sharp
# on high-density screens; the layout's CSS (max-width: 100%) shows them at the column's width.
MAX_WIDTH = 1200
EMAIL_WIDTH = 600
# An animated GIF keeps its animation up to this many frames (and media_max_pixels over all of them).
MAX_FRAMES = 300
ALT_MAX = 300
FILENAME_MAX = 200
# What Pillow finds in the file (never the file's name) → what we store. WebP is re-encoded
# as PNG (transparent) or JPEG: Outlook for Windows and older Apple Mail show no WebP.
ACCEPTED = {"PNG": "PNG", "JPEG": "JPEG", "GIF": "GIF", "WEBP": None}
MIME = {"PNG": "image/png", "JPEG": "image/jpeg", "GIF": "image/gif"}
EXTENSION = {"image/png": "png", "image/jpeg": "jpg", "image/gif": "gif"}
# Newsletters and steps not yet (or still being) sent: an image they use cannot be deleted.
UNSENT = (NewsletterStatus.DRAFT, NewsletterStatus.SCHEDULED, NewsletterStatus.PAUSED, NewsletterStatus.SENDING)


@dataclasses.dataclass(frozen=True)
class Processed:
    """An upload as it will be stored."""

    data: bytes
    mime: str
    width: int
    height: int

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


# Checking and re-encoding (pure) ------------------------------------------------------

def _megabytes(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MB"


def process_image(data: bytes, *, max_bytes: int, max_pixels: int) -> Processed:
    """Accept only a real PNG, JPEG, GIF or WebP within the limits; return it re-encoded
    without metadata and at most MAX_WIDTH wide. Anything else is InvalidInput("file")."""
    if not data:
        raise InvalidInput("file", "The file is empty.")
    if len(data) > max_bytes:
        raise InvalidInput("file", f"The file is {_megabytes(len(data))}; the largest accepted is "
                                   f"{_megabytes(max_bytes)}. Save it smaller (e.g. 1200 px wide) and try again.")
    with warnings.catch_warnings():
        # Our own limit (max_pixels) is checked on the header before any decoding; Pillow's
        # warning would only repeat it. Its error (at twice its own limit) is still caught.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            return _reencode(data, max_pixels)
        except Image.DecompressionBombError:
            raise InvalidInput("file", _too_many_pixels(max_pixels)) from None
        except InvalidInput:
            raise
        except Exception:  # Pillow raises many kinds on a broken or hostile file
            raise InvalidInput("file", "This file is not an image mailer can read: upload a PNG, JPEG, GIF "
                                       "or WebP file.") from None


def _too_many_pixels(max_pixels: int, width: int | None = None, height: int | None = None) -> str:
    size = f" ({width} × {height} pixels)" if width else ""
    return (f"The image is too large{size}: at most {max_pixels:,} pixels are accepted. Resize it "
            f"(e.g. to {MAX_WIDTH} px wide) and try again.")


def _reencode(data: bytes, max_pixels: int) -> Processed:
    with Image.open(io.BytesIO(data)) as probe:  # reads only the header
        kind = probe.format
        if kind not in ACCEPTED:
            raise InvalidInput("file", f"{kind or 'This'} images are not accepted: upload a PNG, JPEG, GIF or "
                                       "WebP file.")
        width, height = probe.size
        if width * height > max_pixels:  # before decoding anything
            raise InvalidInput("file", _too_many_pixels(max_pixels, width, height))
        probe.verify()  # checksums and structure, without decoding the pixels
    image = Image.open(io.BytesIO(data))
    frames = getattr(image, "n_frames", 1) if kind == "GIF" else 1
    if frames > MAX_FRAMES or frames * width * height > max_pixels:
        raise InvalidInput("file", f"The animation has {frames} frames of {width} × {height} pixels: too many to "
                                   f"accept (at most {max_pixels:,} pixels in all). Shorten or shrink it.")
    if frames > 1:
        return _animated_gif(image, frames)
    image.load()
    image = ImageOps.exif_transpose(image)  # turn it the way the camera meant; the EXIF then goes
    target = ACCEPTED[kind] or ("PNG" if _has_alpha(image) else "JPEG")
    image = _resized(_pixels_only(image, target))
    out = io.BytesIO()
    if target == "JPEG":
        image.save(out, "JPEG", quality=85, optimize=True)
    elif target == "PNG":
        image.save(out, "PNG", optimize=image.width * image.height <= 2_000_000)
    else:
        image.save(out, "GIF")
    return Processed(out.getvalue(), MIME[target], image.width, image.height)


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)


def _pixels_only(image: Image.Image, target: str) -> Image.Image:
    """A copy holding only pixels (and a GIF's or PNG's transparent colour): what Pillow
    would otherwise carry into the saved file from `info` (ICC, EXIF, XMP, text) is dropped."""
    transparency = image.info.get("transparency") if image.mode in ("P", "L", "RGB") else None
    if target == "JPEG":
        image = image.convert("RGB") if image.mode not in ("RGB", "L") else image
    elif target == "GIF":
        image = image.convert("P") if image.mode not in ("P", "L") else image
    elif image.mode not in ("1", "L", "LA", "P", "RGB", "RGBA"):
        image = image.convert("RGBA" if _has_alpha(image) or "A" in image.mode else "RGB")
    clean = image.copy()
    clean.info = {"transparency": transparency} if transparency is not None and target != "JPEG" else {}
    return clean


def _resized(image: Image.Image) -> Image.Image:
    if image.width <= MAX_WIDTH:
        return image
    height = max(1, round(image.height * MAX_WIDTH / image.width))
    info = image.info
    if image.mode in ("P", "1"):
        image = image.convert("RGBA" if "transparency" in info else "RGB")
        info = {}
    resized = image.resize((MAX_WIDTH, height), Image.Resampling.LANCZOS)
    resized.info = info
    return resized


def _animated_gif(image: Image.Image, frames: int) -> Processed:
    """An animated GIF stays animated: each frame re-drawn (and narrowed), its timing kept."""
    durations, pictures = [], []
    for frame in ImageSequence.Iterator(image):
        durations.append(int(frame.info.get("duration", 100)))
        pictures.append(_resized(frame.convert("RGBA")))
    loop = image.info.get("loop", 0)
    out = io.BytesIO()
    first, rest = pictures[0], pictures[1:]
    first.info = {}
    first.save(out, "GIF", save_all=True, append_images=rest, duration=durations, loop=loop, disposal=2)
    return Processed(out.getvalue(), "image/gif", first.width, first.height)


# The library ---------------------------------------------------------------------------

def _alt(alt: str) -> str:
    alt = " ".join((alt or "").split())
    if len(alt) > ALT_MAX:
        raise InvalidInput("alt", f"Alt text is at most {ALT_MAX} characters (it has {len(alt)}).")
    return alt


def _filename(name: str) -> str:
    name = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if c.isprintable())
    return name[:FILENAME_MAX]


def add_image(session: Session, data: bytes, *, alt: str, filename: str, user_id: int | None, max_bytes: int,
              max_pixels: int, now: dt.datetime) -> tuple[MediaImage, bool]:
    """Store an upload (see process_image). The same image uploaded again is the same row:
    (row, False); its alt text is filled in if it had none."""
    alt = _alt(alt)
    processed = process_image(data, max_bytes=max_bytes, max_pixels=max_pixels)
    digest = processed.sha256
    existing = session.scalar(sa.select(MediaImage).where(MediaImage.sha256 == digest))
    if existing is not None:
        if alt and not existing.alt:
            existing.alt = alt
        return existing, False
    image = MediaImage(key=secrets.token_urlsafe(12), sha256=digest, mime=processed.mime, width=processed.width,
                       height=processed.height, size=len(processed.data), data=processed.data, alt=alt,
                       filename=_filename(filename), uploaded_by=user_id, created_at=now)
    try:
        with session.begin_nested():
            session.add(image)
    except sa.exc.IntegrityError:  # the same image, stored at the same moment by another request
        return session.scalars(sa.select(MediaImage).where(MediaImage.sha256 == digest)).one(), False
    return image, True


def list_images(session: Session) -> list[MediaImage]:
    """Newest first, without their bytes."""
    return list(session.scalars(sa.select(MediaImage).order_by(MediaImage.id.desc())))


def get_image(session: Session, image_id: int) -> MediaImage:
    image = session.get(MediaImage, image_id)
    if image is None:
        raise NotFound(f"no image {image_id}")
    return image


def image_for_serving(session: Session, key: str, extension: str) -> MediaImage | None:
    """The image at /media/<key>.<extension> with its bytes, or None."""
    image = session.scalar(sa.select(MediaImage).where(MediaImage.key == key)
                           .options(sa.orm.undefer(MediaImage.data)))
    if image is None or EXTENSION[image.mime] != extension:
        return None
    return image


def set_alt(session: Session, image_id: int, alt: str) -> MediaImage:
    image = get_image(session, image_id)
    image.alt = _alt(alt)
    return image


def users_of(session: Session, image: MediaImage) -> tuple[list[str], list[str]]:
    """(what unsent mail uses the image, what sent issues show it), as names staff know:
    newsletters by subject, automation steps by automation name."""
    pattern = f"%/media/{image.key.replace('_', '#_')}.%"  # keys may hold "_", a LIKE wildcard
    unsent, sent = [], []
    for subject, status in session.execute(sa.select(Newsletter.subject, Newsletter.status)
                                           .where(Newsletter.body_md.like(pattern, escape="#")).order_by(Newsletter.id)):
        if status in UNSENT:
            unsent.append(f"newsletter “{subject}” ({status})")
        elif status == NewsletterStatus.SENT:
            sent.append(f"newsletter “{subject}”")
    for name, position in session.execute(
            sa.select(Sequence.name, SequenceStep.position).join(Sequence, SequenceStep.sequence_id == Sequence.id)
            .where(SequenceStep.body_md.like(pattern, escape="#"), SequenceStep.deleted_at.is_(None),
                   Sequence.status != SequenceStatus.ARCHIVED)
            .order_by(Sequence.id, SequenceStep.position)):
        unsent.append(f"automation “{name}”, step {position + 1}")
    return unsent, sent


def delete_image(session: Session, image_id: int) -> tuple[MediaImage, list[str]]:
    """Delete an image no unsent mail uses (Conflict naming them otherwise). Returns the row
    and the sent issues that showed it: their copies in inboxes lose the picture."""
    image = get_image(session, image_id)
    unsent, sent = users_of(session, image)
    if unsent:
        raise Conflict("image", "This image is used by " + "; ".join(unsent) + ". Remove it from there first.")
    session.delete(image)
    session.flush()
    return image, sent


# Addresses and snippets ------------------------------------------------------------------

def image_url(base_url: str, image: MediaImage) -> str:
    """The absolute address mail uses (MAILER_BASE_URL, as for every link in mail)."""
    return f"{base_url}/media/{image.key}.{EXTENSION[image.mime]}"


def email_widths(session: Session, base_url: str, body_md: str) -> dict[str, int]:
    """The width mail gives each library image `body_md` shows (address → pixels): its
    own, at most the 600-pixel column (one query, only when the body has any)."""
    keys = set(re.findall(re.escape(f"{base_url}/media/") + r"([A-Za-z0-9_-]{1,32})\.(?:png|jpg|gif)\b", body_md))
    if not keys:
        return {}
    found = session.execute(sa.select(MediaImage.key, MediaImage.mime, MediaImage.width)
                            .where(MediaImage.key.in_(keys)))
    return {f"{base_url}/media/{key}.{EXTENSION[mime]}": min(width, EMAIL_WIDTH) for key, mime, width in found}


def markdown_snippet(base_url: str, image: MediaImage) -> str:
    """`![alt](url)`, brackets in the alt text escaped for Markdown. The body is a template
    too: a `{{`, `{%` or `{#` in the alt text gets a space (`{ {`) so it is not read as one."""
    alt = re.sub(r"\{(?=[{%#])", "{ ", re.sub(r"([\[\]\\])", r"\\\1", image.alt))
    return f"![{alt}]({image_url(base_url, image)})"


def download_name(image: MediaImage) -> str:
    """A file name safe in a header: ASCII letters, digits, dots, dashes and underscores."""
    stem = (image.filename or "image").rsplit(".", 1)[0]
    stem = unicodedata.normalize("NFKD", stem).encode("ascii", "ignore").decode()
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip(".-")[:60] or "image"
    return f"{stem}.{EXTENSION[image.mime]}"
