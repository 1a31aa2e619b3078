"""The media library: only real images are kept, re-encoded without metadata and narrowed;
they are served from our origin with long caching, used in newsletters (mail points at our
origin and the image loads from there), managed from the console, the API and the CLI."""
from __future__ import annotations

import io
import re

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from PIL import Image

from mailer.campaigns import media, newsletters
from mailer.cli import main
from mailer.db import session_scope, utcnow
from mailer.errors import InvalidInput
from mailer.models import AuditLog, MediaImage, Newsletter
from tests.audience import make_audience, make_newsletter
from tests.conftest import SECRET
from tests.test_api_newsletters import Api, error_of

LIMITS = {"max_bytes": 10 * 1024 * 1024, "max_pixels": 40_000_000}
GPS = 0x8825


def image_bytes(fmt: str, size=(64, 48), mode="RGB", colour=(200, 30, 30), **save) -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, colour if mode != "P" else 3).save(out, fmt, **save)
    return out.getvalue()


def jpeg_with_gps(size=(1600, 1200)) -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "PhoneMaker"  # camera make
    exif[GPS] = {1: "N", 2: (51.0, 30.0, 12.5), 3: "W", 4: (0.0, 7.0, 40.0)}
    return image_bytes("JPEG", size=size, exif=exif.tobytes(), comment=b"taken at home")


def opened(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


def add(mailer, data: bytes, alt="A stretch", filename="photo.jpg"):
    with session_scope(mailer.sessions) as session:
        image, created = media.add_image(session, data, alt=alt, filename=filename, user_id=None, now=utcnow(),
                                         **LIMITS)
        return image.id, image.key, media.EXTENSION[image.mime], created


# Checking and re-encoding ------------------------------------------------------------------

@pytest.mark.parametrize("fmt, mime", [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("GIF", "image/gif"),
                                       ("WEBP", "image/jpeg")])
def test_each_accepted_format_is_decoded_and_saved_again(fmt, mime):
    processed = media.process_image(image_bytes(fmt), **LIMITS)
    assert (processed.mime, processed.width, processed.height) == (mime, 64, 48)
    assert opened(processed.data).format == mime.split("/")[1].upper()


def test_a_transparent_webp_becomes_a_png_keeping_its_transparency():
    processed = media.process_image(image_bytes("WEBP", mode="RGBA", colour=(0, 0, 0, 0)), **LIMITS)
    assert processed.mime == "image/png"
    assert opened(processed.data).convert("RGBA").getpixel((1, 1))[3] == 0


def test_exif_gps_and_comments_are_gone_and_a_wide_photo_is_narrowed():
    original = jpeg_with_gps()
    assert GPS in opened(original).getexif() and b"taken at home" in original
    processed = media.process_image(original, **LIMITS)
    stored = opened(processed.data)
    assert dict(stored.getexif()) == {}
    assert not {"exif", "icc_profile", "xmp", "comment"} & set(stored.info)
    assert b"PhoneMaker" not in processed.data and b"taken at home" not in processed.data
    assert (processed.width, processed.height) == (media.MAX_WIDTH, 900) == stored.size


def test_an_animated_gif_stays_animated():
    frames = [Image.new("RGB", (80, 60), (i * 50, 0, 0)) for i in range(4)]
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:], duration=120, loop=0, comment=b"home address")
    processed = media.process_image(out.getvalue(), **LIMITS)
    stored = opened(processed.data)
    assert processed.mime == "image/gif" and stored.n_frames == 4 and stored.info["duration"] == 120
    assert b"home address" not in processed.data and "comment" not in stored.info


@pytest.mark.parametrize("data, words", [
    (b"<html><body><script>alert(document.cookie)</script></body></html>", "not an image mailer can read"),
    (b"", "The file is empty"),
    (image_bytes("PNG")[:60], "not an image mailer can read"),  # cut short
    (image_bytes("BMP"), "BMP images are not accepted"),
    (image_bytes("TIFF"), "TIFF images are not accepted"),
])
def test_what_is_not_an_accepted_image_is_refused_with_a_reason(data, words):
    with pytest.raises(InvalidInput) as refused:
        media.process_image(data, **LIMITS)
    assert refused.value.field == "file" and words in refused.value.message


def test_html_hidden_in_a_png_is_not_kept():
    """A polyglot: a valid PNG with HTML in a text chunk and after its end. Only pixels are kept."""
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "<script>alert(1)</script>")
    polyglot = image_bytes("PNG", pnginfo=info) + b"<html><script>alert(2)</script></html>"
    assert b"<script>" in polyglot
    processed = media.process_image(polyglot, **LIMITS)
    assert b"<script" not in processed.data and b"html" not in processed.data.lower()


def test_oversize_files_and_decompression_bombs_are_refused_before_decoding():
    with pytest.raises(InvalidInput, match=r"The file is 0\.1 MB; the largest accepted is 0\.0 MB"):
        media.process_image(image_bytes("PNG", size=(400, 300)) + b"\0" * 100_000, max_bytes=50_000,
                            max_pixels=LIMITS["max_pixels"])
    bomb = image_bytes("PNG", size=(12000, 12000), mode="L", colour=0)  # ~150 KB, 144 million pixels
    assert len(bomb) < 1_000_000
    with pytest.raises(InvalidInput, match=r"too large \(12000 × 12000 pixels\): at most 40,000,000 pixels"):
        media.process_image(bomb, **LIMITS)
    frames = [Image.new("L", (1000, 1000), i) for i in range(50)]  # 50 million pixels in all
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:])
    with pytest.raises(InvalidInput, match="The animation has 50 frames of 1000 × 1000 pixels"):
        media.process_image(out.getvalue(), **LIMITS)


# The library ------------------------------------------------------------------------------

def test_the_same_image_is_kept_once_and_alt_text_is_checked(mailer, db):
    first = add(mailer, jpeg_with_gps(), alt="")
    again = add(mailer, jpeg_with_gps(), alt="Knee stretch")
    assert first[0] == again[0] and first[3] and not again[3]
    assert db.scalar(sa.select(sa.func.count()).select_from(MediaImage)) == 1
    assert db.scalar(sa.select(MediaImage.alt)) == "Knee stretch"  # filled in: it had none
    with session_scope(mailer.sessions) as session, pytest.raises(InvalidInput, match="at most 300"):
        media.set_alt(session, first[0], "x" * 301)


def test_an_image_unsent_mail_uses_cannot_be_deleted(mailer, db):
    image_id, key, ext, _ = add(mailer, image_bytes("PNG"))
    snippet = f"![Chart](https://news.example.org/media/{key}.{ext})"
    with session_scope(mailer.sessions) as session:
        session.add_all([Newsletter(subject="March issue", body_md=f"Hello\n\n{snippet}", status="draft"),
                         Newsletter(subject="January issue", body_md=snippet, status="sent")])
    with session_scope(mailer.sessions) as session, pytest.raises(InvalidInput) as refused:
        media.delete_image(session, image_id)
    assert "newsletter “March issue” (draft)" in refused.value.message
    # "_" is a LIKE wildcard, matched as itself: this key differs from the one the mail uses.
    db.write(sa.update(MediaImage).values(key=key[:3] + ("_" if key[3] != "_" else "x") + key[4:]))
    with session_scope(mailer.sessions) as session:
        assert media.users_of(session, media.get_image(session, image_id)) == ([], [])
    db.write(sa.update(MediaImage).values(key=key))
    db.write(sa.delete(Newsletter).where(Newsletter.subject == "March issue"))
    with session_scope(mailer.sessions) as session:
        _, sent = media.delete_image(session, image_id)
    assert sent == ["newsletter “January issue”"]
    assert db.scalar(sa.select(MediaImage.id)) is None


# Serving ---------------------------------------------------------------------------------

def test_served_from_our_origin_with_caching_and_safety_headers(client, mailer):
    image_id, key, ext, _ = add(mailer, jpeg_with_gps(), filename="Ünïcode \"name\";\r\nX-Evil: 1.jpeg")
    answer = client.get(f"/media/{key}.{ext}")
    assert answer.status_code == 200
    assert answer.headers["Content-Type"] == "image/jpeg"
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    assert answer.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert answer.headers["Content-Disposition"] == 'inline; filename="Unicode-name-X-Evil-1.jpg"'
    assert "default-src 'none'" in answer.headers["Content-Security-Policy"]
    assert "sandbox" in answer.headers["Content-Security-Policy"]
    assert "Set-Cookie" not in answer.headers
    served = opened(answer.data)
    assert dict(served.getexif()) == {} and served.size == (1200, 900)
    etag = answer.headers["ETag"]
    assert client.get(f"/media/{key}.{ext}", headers={"If-None-Match": etag}).status_code == 304
    # Only the right extension, and no walking the library by number.
    assert client.get(f"/media/{key}.png").status_code == 404
    assert client.get(f"/media/{image_id}.jpg").status_code == 404
    assert client.get(f"/media/{key}x.jpg").status_code == 404
    assert len(key) >= 16


def test_a_newsletter_with_a_library_image_points_at_our_origin(app, client, mailer, smtp_server):
    _, key, ext, _ = add(mailer, image_bytes("PNG", size=(900, 300)), alt="Our new treatment room")
    with session_scope(mailer.sessions) as session:
        image = session.scalar(sa.select(MediaImage))
        snippet = media.markdown_snippet(mailer.settings.base_url, image)
    assert snippet == f"![Our new treatment room](https://news.example.org/media/{key}.{ext})"
    make_audience(mailer, 1)
    newsletter_id = make_newsletter(mailer, body=f"Hello {{{{ contact.first_name }}}},\n\n{snippet}\n\nSee you soon.")
    with session_scope(mailer.sessions) as session:  # pre-flight: the library image has alt text
        problems = newsletters.preflight(session, mailer.renderer, mailer.settings, newsletter_id)
    assert not [p for p in problems if "alt text" in p]
    assert mailer.drain().sent == 1
    html = smtp_server.received[0].message.get_body(preferencelist=("html",)).get_content()
    sources = re.findall(r'<img[^>]* src="([^"]+)"', html)
    assert sources == [f"https://news.example.org/media/{key}.{ext}"]
    assert 'alt="Our new treatment room"' in html
    # Outlook for Windows reads the width attribute, not CSS: the 900-pixel image gets the column's 600.
    assert re.search(r'<img [^>]*width="600"[^>]*style="[^"]*max-width: ?100%', html)
    fetched = client.get(sources[0].removeprefix("https://news.example.org"))
    assert fetched.status_code == 200 and opened(fetched.data).size == (900, 300)


def test_preflight_asks_for_alt_text_of_a_library_image(mailer):
    image_id, key, ext, _ = add(mailer, image_bytes("GIF"), alt="")
    with session_scope(mailer.sessions) as session:
        snippet = media.markdown_snippet(mailer.settings.base_url, media.get_image(session, image_id))
    problems = newsletters.content_problems(mailer.renderer, mailer.settings, subject="News", preheader="",
                                            body_md=f"Hi\n\n{snippet}", layout="default")
    assert "1 image(s) have no alt text." in problems


# The console -----------------------------------------------------------------------------

def upload(client, token, data: bytes, name="photo.jpg", alt="Back exercise"):
    return client.post("/admin/media", data={"csrf_token": token, "alt": alt, "file": (io.BytesIO(data), name)},
                       content_type="multipart/form-data")


def test_console_upload_alt_and_delete_with_roles_and_audit(staff, mailer, db):
    editor, token = staff("editor")
    answer = upload(editor, token, jpeg_with_gps())
    assert answer.status_code == 302
    page = editor.get("/admin/media").text
    assert "Uploaded: 1200 × 900 pixels." in page
    image_id, key = db.execute(sa.select(MediaImage.id, MediaImage.key))[0]
    assert f'value="![Back exercise](https://news.example.org/media/{key}.jpg)"' in page
    assert f'src="/media/{key}.jpg"' in page and "1200 × 900 px" in page

    refused = upload(editor, token, b"<html>not an image</html>", name="evil.png")
    assert refused.status_code == 400
    assert "Not uploaded: This file is not an image mailer can read" in refused.text
    assert "Choose an image file" in editor.post("/admin/media", data={"csrf_token": token},
                                                 content_type="multipart/form-data").text

    editor.post(f"/admin/media/{image_id}/alt", data={"csrf_token": token, "alt": "Cat stretch <b>pose</b>"})
    page = editor.get("/admin/media").text
    assert "Cat stretch &lt;b&gt;pose&lt;/b&gt;" in page and "<b>pose</b>" not in page

    viewer, viewer_token = staff("viewer")
    assert "Upload an image" not in viewer.get("/admin/media").text
    assert upload(viewer, viewer_token, image_bytes("PNG")).status_code == 403
    assert viewer.post(f"/admin/media/{image_id}/delete", data={"csrf_token": viewer_token}).status_code == 403
    assert editor.post(f"/admin/media/{image_id}/delete", data={"alt": "no token"}).status_code == 400  # CSRF

    assert editor.post(f"/admin/media/{image_id}/delete", data={"csrf_token": token}).status_code == 302
    assert "Image deleted." in editor.get("/admin/media").text
    actions = [a for a in db.scalars(sa.select(AuditLog.action).order_by(AuditLog.id)) if a.startswith("media.")]
    assert actions == ["media.upload", "media.alt", "media.delete"]
    assert editor.get(f"/media/{key}.jpg").status_code == 404
    assert staff("viewer")[0].get("/admin/media").status_code == 200
    assert mailer.settings.base_url not in db.scalar(sa.select(sa.func.max(AuditLog.detail)))


def test_console_refuses_a_file_over_the_limit_clearly(app, staff, mailer):
    import dataclasses

    mailer.settings = mailer.base_settings = dataclasses.replace(mailer.settings, media_max_bytes=200_000)
    mailer.settings_read_at = float("inf")  # keep the smaller limit for this test
    editor, token = staff("editor")
    answer = upload(editor, token, b"\xff" * 400_000, name="huge.jpg")
    assert answer.status_code == 413
    assert "The file is larger than 0.2 MB, the largest accepted." in answer.text
    answer = upload(editor, token, b"\xff" * 210_000, name="big.jpg")  # within the form's overhead
    assert answer.status_code == 400 and "the largest accepted is 0.2 MB" in answer.text


def test_deleting_an_image_a_draft_uses_is_refused_with_its_name(staff, mailer):
    image_id, key, ext, _ = add(mailer, image_bytes("PNG"))
    with session_scope(mailer.sessions) as session:
        session.add(Newsletter(subject="April <issue>", body_md=f"![x](https://news.example.org/media/{key}.{ext})"))
    editor, token = staff("editor")
    editor.post(f"/admin/media/{image_id}/delete", data={"csrf_token": token})
    page = editor.get("/admin/media").text
    assert "Not deleted: This image is used by newsletter “April &lt;issue&gt;” (draft)" in page


def test_editor_lists_the_library_to_insert(staff, mailer):
    add(mailer, image_bytes("PNG"), alt="Spine model")
    editor, _ = staff("editor")
    page = editor.get("/admin/newsletters/new").text
    assert "Insert image" in page
    assert re.search(r'value="!\[Spine model\]\(https://news\.example\.org/media/[\w-]+\.png\)" readonly', page)


def test_preview_may_load_library_images_from_an_http_base_url(app, staff, mailer):
    import dataclasses

    mailer.settings = mailer.base_settings = dataclasses.replace(mailer.settings, base_url="http://127.0.0.1:5000")
    mailer.settings_read_at = float("inf")
    editor, token = staff("editor")
    answer = editor.post("/admin/newsletters/preview", data={"csrf_token": token, "subject": "S", "body_md": "Hi"})
    assert "img-src https: data: http://127.0.0.1:5000;" in answer.headers["Content-Security-Policy"]


# The API ---------------------------------------------------------------------------------

def test_api_upload_list_patch_delete(client, tokens, db):
    api = Api(client, tokens.write)
    answer = client.post("/api/v1/media", data={"file": (io.BytesIO(jpeg_with_gps()), "p.jpg"), "alt": "Desk"},
                         headers={"Authorization": f"Bearer {tokens.write}"}, content_type="multipart/form-data")
    assert answer.status_code == 201, answer.json
    image = answer.json
    assert image["url"].startswith("https://news.example.org/media/") and image["url"].endswith(".jpg")
    assert image["markdown"] == f"![Desk]({image['url']})"
    assert (image["width"], image["height"], image["mime"], image["alt"]) == (1200, 900, "image/jpeg", "Desk")
    assert answer.headers["Location"].endswith(f"/api/v1/media/{image['id']}")
    assert [i["id"] for i in Api(client, tokens.read).get("/media").json["items"]] == [image["id"]]
    assert api.patch(f"/media/{image['id']}", {"alt": "Standing desk"}).json["alt"] == "Standing desk"
    assert error_of(api.patch(f"/media/{image['id']}", {"alt": 3}), 422)["field"] == "alt"

    bad = client.post("/api/v1/media", data={"file": (io.BytesIO(b"GIF89a not really"), "x.gif")},
                      headers={"Authorization": f"Bearer {tokens.write}"}, content_type="multipart/form-data")
    assert error_of(bad, 422)["field"] == "file"
    missing = client.post("/api/v1/media", data={"alt": "no file"},
                          headers={"Authorization": f"Bearer {tokens.write}"}, content_type="multipart/form-data")
    assert error_of(missing, 422)["field"] == "file"
    read_only = client.post("/api/v1/media", data={"file": (io.BytesIO(image_bytes("PNG")), "x.png")},
                            headers={"Authorization": f"Bearer {tokens.read}"}, content_type="multipart/form-data")
    error_of(read_only, 403)

    with session_scope(client.application.extensions["mailer"].sessions) as session:
        session.add(Newsletter(subject="May", body_md=image["markdown"], status="scheduled"))
    conflict = error_of(api("DELETE", f"/media/{image['id']}"), 409)
    assert "newsletter “May” (scheduled)" in conflict["message"]
    db.write(sa.delete(Newsletter))
    assert api("DELETE", f"/media/{image['id']}").json == {"id": image["id"], "sent_issues": []}
    error_of(api.get(f"/media/{image['id']}"), 404)


def test_openapi_describes_the_upload_as_multipart(client):
    document = client.get("/api/v1/openapi.json").json
    upload = document["paths"]["/media"]["post"]
    schema_ref = upload["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"]
    schema = document["components"]["schemas"][schema_ref.rsplit("/", 1)[1]]
    assert set(schema["properties"]) == {"file", "alt"} and schema["required"] == ["file"]
    assert {"413", "422", "201"} <= set(upload["responses"])
    assert set(document["paths"]["/media/{id}"]) == {"get", "patch", "delete"}


# The command line ------------------------------------------------------------------------

def cli(database_url, tmp_path, *args):
    env = {"MAILER_DATABASE_URL": database_url, "MAILER_SECRET_KEY": SECRET, "MAILER_BASE_URL": "https://news.example.org",
           "MAILER_INSTANCE_PATH": str(tmp_path / "instance")}
    return CliRunner().invoke(main, list(args), env=env)


def test_cli_add_list_delete(database_url, tmp_path, db):
    photo = tmp_path / "walk.jpg"
    photo.write_bytes(jpeg_with_gps(size=(800, 600)))
    added = cli(database_url, tmp_path, "media", "add", str(photo), "--alt", "A walk")
    assert added.exit_code == 0, added.output
    image_id, key = db.execute(sa.select(MediaImage.id, MediaImage.key))[0]
    assert added.output == (f"added image {image_id} (800 × 600, image/jpeg)\n"
                            f"![A walk](https://news.example.org/media/{key}.jpg)\n")
    listed = cli(database_url, tmp_path, "media", "list")
    assert listed.output == f"{image_id}\t800x600\timage/jpeg\tA walk\thttps://news.example.org/media/{key}.jpg\n"
    bad = tmp_path / "notes.png"
    bad.write_text("just text")
    refused = cli(database_url, tmp_path, "media", "add", str(bad))
    assert refused.exit_code == 1 and "not an image mailer can read" in refused.output
    assert cli(database_url, tmp_path, "media", "alt", str(image_id), "A park walk").exit_code == 0
    assert db.scalar(sa.select(MediaImage.alt)) == "A park walk"
    deleted = cli(database_url, tmp_path, "media", "delete", str(image_id))
    assert deleted.exit_code == 0 and deleted.output == f"deleted image {image_id}\n"
    assert "no image" in cli(database_url, tmp_path, "media", "delete", str(image_id)).output
    assert [a for a in db.scalars(sa.select(AuditLog.action).order_by(AuditLog.id)) if a.startswith("media.")] == \
        ["media.upload", "media.alt", "media.delete"]


def test_api_upload_over_the_limit_is_a_clear_413(app, client, tokens, mailer):
    import dataclasses

    mailer.settings = mailer.base_settings = dataclasses.replace(mailer.settings, media_max_bytes=100_000)
    mailer.settings_read_at = float("inf")
    answer = client.post("/api/v1/media", data={"file": (io.BytesIO(b"\xff" * 300_000), "big.jpg")},
                         headers={"Authorization": f"Bearer {tokens.write}"}, content_type="multipart/form-data")
    assert error_of(answer, 413)["message"] == "The body is larger than 0.2 MB, the most this operation accepts."
    answer = client.post("/api/v1/media", data={"file": (io.BytesIO(b"\xff" * 120_000), "big.jpg")},
                         headers={"Authorization": f"Bearer {tokens.write}"}, content_type="multipart/form-data")
    assert "the largest accepted is 0.1 MB" in error_of(answer, 422)["message"]


def test_alt_text_with_brackets_and_braces_shows_as_written(mailer):
    image_id, *_ = add(mailer, image_bytes("PNG"), alt="Exercise [1] {{ not a tag }} \\ done")
    with session_scope(mailer.sessions) as session:
        snippet = media.markdown_snippet(mailer.settings.base_url, media.get_image(session, image_id))
    assert not newsletters.template_problems("S", "", snippet)
    rendered = newsletters.preview(mailer.renderer, mailer.settings, subject="S", preheader="", body_md=snippet,
                                   layout="default")
    assert 'alt="Exercise [1] { { not a tag }} \\ done"' in rendered.html


def test_email_widths_are_the_images_own_at_most_the_column(mailer):
    wide = add(mailer, image_bytes("PNG", size=(1000, 500)))
    narrow = add(mailer, image_bytes("JPEG", size=(320, 200)))
    base = "https://news.example.org"
    body = (f"![a]({base}/media/{wide[1]}.png) ![b]({base}/media/{narrow[1]}.jpg) "
            f"![c](https://elsewhere.example/media/{narrow[1]}.jpg) ![d]({base}/media/unknown.png)")
    with mailer.read_sessions() as session:
        assert media.email_widths(session, base, body) == {f"{base}/media/{wide[1]}.png": 600,
                                                          f"{base}/media/{narrow[1]}.jpg": 320}
    from mailer.delivery.rendering import with_image_widths

    html = f'<p><img src="{base}/media/{wide[1]}.png" alt="a"><img width="50" src="{base}/media/{wide[1]}.png"></p>'
    assert with_image_widths(html, {f"{base}/media/{wide[1]}.png": 600}) == (
        f'<p><img src="{base}/media/{wide[1]}.png" width="600" alt="a"><img width="50" src="{base}/media/{wide[1]}.png"></p>')
