"""API models for the media library."""
from __future__ import annotations

from typing import Annotated

from pydantic import Field as Described

from mailer.campaigns import media
from mailer.web.api.api_schemas import Request, Response, Text, UtcDatetime

Alt = Annotated[Text(0, media.ALT_MAX), Described(
    description="What the image shows, for readers who cannot see it (newsletters' pre-flight asks for it).",
    examples=["Three exercises for the lower back"])]


class ImageUpload(Request):
    file: bytes = Described(description="A PNG, JPEG, GIF or WebP file, at most MAILER_MEDIA_MAX_BYTES (10 MB by "
                                        "default). It is decoded and saved again: no metadata (EXIF, GPS, ICC, "
                                        f"comments) is kept, and it is narrowed to {media.MAX_WIDTH} px; WebP "
                                        "becomes PNG or JPEG, which every mail program shows.")
    alt: Alt = ""


class ImagePatch(Request):
    alt: Alt


class MediaImage(Response):
    id: int
    url: str = Described(description="The absolute address that shows it (under MAILER_BASE_URL); it never "
                                     "changes and is cached for a year.")
    markdown: str = Described(description="Markdown that shows it in a newsletter's body.",
                              examples=["![Three exercises](https://mail.example.com/media/Ab3xYz.jpg)"])
    mime: str = Described(examples=["image/jpeg"])
    width: int
    height: int
    size: int = Described(description="Bytes stored.")
    alt: str
    filename: str = Described(description="The uploaded file's name.")
    created_at: UtcDatetime

    @classmethod
    def of(cls, row, base_url: str) -> "MediaImage":
        return cls(id=row.id, url=media.image_url(base_url, row), markdown=media.markdown_snippet(base_url, row),
                   mime=row.mime, width=row.width, height=row.height, size=row.size, alt=row.alt,
                   filename=row.filename, created_at=row.created_at)


class MediaPage(Response):
    items: list[MediaImage]


class MediaDeleted(Response):
    id: int
    sent_issues: list[str] = Described(description="Sent newsletters that showed the image: their copies no "
                                                   "longer do.")
