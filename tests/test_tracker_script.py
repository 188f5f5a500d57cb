"""GET /script.js: the tracker's size, that its minified form still parses, and how a real
server serves it (gzip or identity, ETag and 304, HEAD, cache headers)."""

from __future__ import annotations

import gzip
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from ingest.tracker import SOURCE, accepts_gzip, build, matching_etag

MAX_GZIPPED_BYTES = 1024
SCRIPT = build(SOURCE.read_text(encoding="utf-8"))


def test_the_script_is_at_most_1024_bytes_gzipped() -> None:
    assert len(SCRIPT.gzipped) <= MAX_GZIPPED_BYTES
    assert gzip.decompress(SCRIPT.gzipped) == SCRIPT.minified
    # The minifier did its job: comments and indentation are gone.
    assert len(SCRIPT.minified) < len(SOURCE.read_bytes()) / 2
    assert b"/*" not in SCRIPT.minified and b"\n  " not in SCRIPT.minified


def test_the_same_source_gives_the_same_bytes_and_etag() -> None:
    again = build(SOURCE.read_text(encoding="utf-8"))
    assert (again.gzipped, again.etag) == (SCRIPT.gzipped, SCRIPT.etag)
    assert SCRIPT.gzipped[4:8] == b"\0\0\0\0"  # no modification time in the gzip header
    assert build(SOURCE.read_text(encoding="utf-8") + "\n;").etag != SCRIPT.etag


def test_the_minified_script_still_parses(tmp_path: Path) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    minified = tmp_path / "script.min.js"
    minified.write_bytes(SCRIPT.minified)
    checked = subprocess.run([node, "--check", str(minified)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    # The regular expression that recognises local hosts survived minification whole.
    assert rb"/^(localhost|127(\.\d+){3}|\[::1\])$/.test(" in SCRIPT.minified


@pytest.mark.parametrize(
    ("accept_encoding", "gzip_allowed"),
    [
        (None, False),
        (b"", False),
        (b"identity", False),
        (b"gzip", True),
        (b"gzip, deflate, br, zstd", True),
        (b"br;q=1.0, GZIP;q=0.5", True),
        (b"x-gzip", True),
        (b"gzip;q=0", False),
        (b"gzip; q=0.000", False),
        (b"*", True),
        (b"*;q=0", False),
        (b"gzip;q=0, *", False),
        (b"deflate, br", False),
        (b"gzip;q=nonsense", False),
    ],
)
def test_gzip_is_sent_only_where_accept_encoding_allows_it(
    accept_encoding: bytes | None, gzip_allowed: bool
) -> None:
    assert accepts_gzip(accept_encoding) is gzip_allowed


def test_if_none_match_is_compared_weakly_and_may_be_a_list() -> None:
    current = (b'"abc"', b'"abc-gzip"')
    assert matching_etag(b'"abc"', current) == b'"abc"'
    assert matching_etag(b'W/"abc-gzip"', current) == b'"abc-gzip"'
    assert matching_etag(b'"old", "abc-gzip"', current) == b'"abc-gzip"'
    assert matching_etag(b"*", current) == b'"abc"'
    assert matching_etag(b'"old", W/"older"', current) is None
    assert matching_etag(b"abc", current) is None  # unquoted: not a tag


async def raw_get(
    http: httpx.AsyncClient, headers: dict[str, str], method: str = "GET"
) -> tuple[httpx.Response, bytes]:
    """The answer and its body as sent (httpx would otherwise decompress it)."""
    async with http.stream(method, "/script.js", headers=headers) as response:
        body = b"".join([chunk async for chunk in response.aiter_raw()])
    return response, body


def assert_cache_headers(response: httpx.Response) -> None:
    assert response.headers["cache-control"] == (
        "public, max-age=3600, stale-while-revalidate=86400"
    )
    assert response.headers["vary"] == "Accept-Encoding"
    assert response.headers["access-control-allow-origin"] == "*"


async def test_a_client_that_takes_gzip_gets_the_precompressed_script(
    http: httpx.AsyncClient,
) -> None:
    response, body = await raw_get(http, {"accept-encoding": "gzip, deflate, br"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/javascript; charset=utf-8"
    assert response.headers["content-encoding"] == "gzip"
    assert body == SCRIPT.gzipped
    assert int(response.headers["content-length"]) == len(body)
    assert gzip.decompress(body) == SCRIPT.minified
    assert response.headers["etag"] == SCRIPT.gzip_etag.decode()
    assert_cache_headers(response)


async def test_a_client_that_does_not_take_gzip_gets_the_minified_script(
    http: httpx.AsyncClient,
) -> None:
    for accept_encoding in ("identity", "gzip;q=0, br"):
        response, body = await raw_get(http, {"accept-encoding": accept_encoding})
        assert response.status_code == 200
        assert "content-encoding" not in response.headers
        assert body == SCRIPT.minified
        assert int(response.headers["content-length"]) == len(body)
        assert response.headers["etag"] == SCRIPT.etag.decode()
        assert response.headers["etag"].startswith('"')  # strong
        assert_cache_headers(response)


async def test_a_held_copy_is_answered_304_without_a_body(http: httpx.AsyncClient) -> None:
    first, _ = await raw_get(http, {"accept-encoding": "gzip"})
    etag = first.headers["etag"]
    for if_none_match in (etag, f"W/{etag}", f'"stale", {etag}', "*"):
        response, body = await raw_get(
            http, {"accept-encoding": "gzip", "if-none-match": if_none_match}
        )
        assert response.status_code == 304, if_none_match
        assert body == b""
        assert response.headers["etag"] == etag
        assert_cache_headers(response)
    # The identity copy a client holds is current too, whatever it accepts now.
    response, _ = await raw_get(
        http, {"accept-encoding": "gzip", "if-none-match": SCRIPT.etag.decode()}
    )
    assert (response.status_code, response.headers["etag"]) == (304, SCRIPT.etag.decode())


async def test_an_old_copy_gets_the_script_again(http: httpx.AsyncClient) -> None:
    response, body = await raw_get(
        http, {"accept-encoding": "identity", "if-none-match": '"0123456789abcdef0123"'}
    )
    assert response.status_code == 200
    assert body == SCRIPT.minified


async def test_head_answers_the_headers_of_get_without_the_body(http: httpx.AsyncClient) -> None:
    for accept_encoding, sent in (("gzip", SCRIPT.gzipped), ("identity", SCRIPT.minified)):
        get, _ = await raw_get(http, {"accept-encoding": accept_encoding})
        head, body = await raw_get(http, {"accept-encoding": accept_encoding}, "HEAD")
        assert head.status_code == 200
        assert body == b""
        assert head.headers["content-length"] == str(len(sent))
        assert dict(head.headers) | {"date": ""} == dict(get.headers) | {"date": ""}


async def test_other_methods_are_refused(http: httpx.AsyncClient) -> None:
    response = await http.post("/script.js", content=b"")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD"
