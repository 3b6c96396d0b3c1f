"""Request size limits before the body is read (issue 15, items 2, 5 and 9): a chunked upload without a key is
refused before its body is spooled anywhere, one over the limit with a key is cut off at the limit, JSON bodies
have a limit of their own, and file names and blank files are judged on what the client sent.

Raw sockets where a request must stay open: a chunked body that never ends shows whether the server answers as
the bytes arrive or waits for all of them (which is when the old code spooled them to a temporary file)."""

from __future__ import annotations

import json
import os
import re
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.jobs.service_fixtures import ALICE, client, live_server, service_settings
from tuneforge.jobs import store

UPLOAD_LIMIT = 100_000
JSON_LIMIT = 20_000
BOUNDARY = "tuneforge-test-boundary"
SENT = (
    3_000_000  # 30 times the limit, and past the 1 MB that Starlette spooled in memory before going to disk
)
HELD = 64 * 1024  # the most the server may hold of a refused body in temporary files
ANSWER_S = 5.0  # a refusal comes within this while the body is still arriving


@pytest.fixture(scope="module")
def spool(tmp_path_factory) -> Iterator[Path]:
    """The server's temporary directory (uvicorn runs in this process): where an upload used to be spooled."""
    folder = tmp_path_factory.mktemp("spool")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tempfile, "tempdir", str(folder))
        yield folder


@pytest.fixture(scope="module")
def server(spool, tmp_path_factory, tiny_model_dir):
    settings = service_settings(
        tmp_path_factory.mktemp("svc"),
        tiny_model_dir,
        max_upload_bytes=UPLOAD_LIMIT,
        max_json_bytes=JSON_LIMIT,
    )
    with live_server(settings) as srv:
        yield srv


def _files_dir(server) -> set[str]:
    return {p.name for p in server.app.state.settings.files_dir.iterdir()}


def _held_bytes(folder: Path) -> int:
    """Bytes in files under `folder`, counting the unnamed ones this process holds open (a TemporaryFile has no
    name in the directory on Linux; it shows only among the process's open files)."""
    total = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith(str(folder)) and target.endswith(" (deleted)"):
                total += os.fstat(int(fd)).st_size
        except OSError:
            continue
    return total


def _open_chunked(server, path: str, content_type: str, key: str | None) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=ANSWER_S)
    head = [
        f"POST {path} HTTP/1.1",
        "Host: 127.0.0.1",
        "Transfer-Encoding: chunked",
        f"Content-Type: {content_type}",
    ]
    if key:
        head.append(f"Authorization: Bearer {key}")
    sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
    return sock


def _send_chunks(sock: socket.socket, data: bytes, size: int = 64 * 1024) -> None:
    """Send `data` as chunks, never the last (empty) chunk: for the server the body is still arriving."""
    for i in range(0, len(data), size):
        piece = data[i : i + size]
        try:
            sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
        except OSError:  # the server closed the connection: its answer is waiting
            return


def _answer(sock: socket.socket) -> tuple[int, dict]:
    buf = b""
    try:
        while b"\r\n\r\n" not in buf:
            piece = sock.recv(65536)
            assert piece, f"connection closed without an answer: {buf[:200]!r}"
            buf += piece
        head, _, body = buf.partition(b"\r\n\r\n")
        length = int(re.search(rb"(?im)^content-length:\s*(\d+)", head).group(1))
        while len(body) < length:
            piece = sock.recv(65536)
            assert piece, "connection closed in the middle of the answer"
            body += piece
    except TimeoutError:
        pytest.fail(
            f"no answer within {ANSWER_S} s while the body was still arriving: the server waits for it all"
        )
    finally:
        sock.close()
    return int(head.split()[1]), json.loads(body[:length])


def _multipart_head(part: str = "file", filename: str = "big.jsonl") -> bytes:
    return (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{part}"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()


RECORDS = b'{"text": "a line of training text"}\n' * (SENT // 36)


def test_a_chunked_upload_without_a_key_is_refused_before_its_body_is_read(server, spool):
    before = _files_dir(server)
    sock = _open_chunked(server, "/v1/files", f"multipart/form-data; boundary={BOUNDARY}", key=None)
    _send_chunks(sock, _multipart_head() + RECORDS)
    held = _held_bytes(spool)
    status, body = _answer(sock)
    assert status == 401 and body["error"]["code"] == "missing_api_key", body
    assert held <= HELD and _held_bytes(spool) <= HELD, f"{held:,} bytes of the refused body in {spool}"
    assert _files_dir(server) == before


@pytest.mark.parametrize("part", ["file", "attachment"])  # counted by the route / by the middleware alone
def test_a_chunked_upload_over_the_limit_is_cut_off_at_the_limit_and_nothing_is_stored(server, spool, part):
    c = client(server)
    files_before, rows_before = _files_dir(server), {f.id for f in c.files.list()}
    sock = _open_chunked(server, "/v1/files", f"multipart/form-data; boundary={BOUNDARY}", key=ALICE)
    _send_chunks(sock, _multipart_head(part) + RECORDS)
    held = _held_bytes(spool)
    status, body = _answer(sock)
    err = body["error"]
    assert status == 413 and err["code"] == "file_too_large", body
    assert f"{UPLOAD_LIMIT:,} bytes" in err["message"] and "TUNEFORGE_MAX_UPLOAD_BYTES" in err["message"]
    assert held <= HELD and _held_bytes(spool) <= HELD, f"{held:,} bytes of the refused body in {spool}"
    assert _files_dir(server) == files_before  # no partial file left in the data directory
    assert {f.id for f in c.files.list()} == rows_before


def test_json_bodies_over_their_limit_are_413_with_or_without_content_length(server):
    c = client(server)
    long_prompt = [{"role": "user", "content": "word " * (JSON_LIMIT // 5)}]
    with pytest.raises(openai.APIStatusError) as e:  # Content-Length declared: refused before reading
        c.chat.completions.create(model="tiny", messages=long_prompt, max_tokens=1)
    assert e.value.status_code == 413 and e.value.body["code"] == "request_too_large"
    assert f"{JSON_LIMIT:,} bytes" in e.value.message and "TUNEFORGE_MAX_JSON_BYTES" in e.value.message

    sock = _open_chunked(server, "/v1/chat/completions", "application/json", key=ALICE)
    _send_chunks(sock, json.dumps({"model": "tiny", "messages": long_prompt * 2}).encode(), size=4096)
    status, body = _answer(sock)
    assert status == 413 and body["error"]["code"] == "request_too_large", body

    # A chunked body under the limit is read as ever.
    pieces = iter([b'{"model": "tiny", ', b'"training_file": "file-nope"}'])
    r = httpx.post(
        f"{server.url}/fine_tuning/jobs",
        content=pieces,
        headers={"Authorization": f"Bearer {ALICE}", "Content-Type": "application/json"},
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "training_file", r.text


def test_a_258_character_jsonl_name_is_accepted_and_shortened_keeping_its_extension(server):
    c = client(server)
    name = "a" * 252 + ".jsonl"
    f = c.files.create(file=(name, b'{"text": "x"}\n'), purpose="fine-tune")
    assert len(f.filename) == 255 and f.filename == "a" * 249 + ".jsonl"
    with server.app.state.sessions() as s:
        row = s.scalar(store.select(store.File).where(store.File.id == f.id))
    assert Path(row.path).name == f"{f.id}.jsonl"
    with pytest.raises(openai.BadRequestError) as e:  # the extension is still checked, on the full name
        c.files.create(file=("b" * 300 + ".jsonl.txt", b'{"text": "x"}\n'), purpose="fine-tune")
    assert e.value.body["code"] == "invalid_file_format"


@pytest.mark.parametrize("content", [b" \n\t\r\n  \n", b"\xef\xbb\xbf\n \n"], ids=["whitespace", "bom"])
def test_a_whitespace_only_file_is_refused_as_holding_no_records(server, content):
    c = client(server)
    before = _files_dir(server)
    with pytest.raises(openai.BadRequestError) as e:
        c.files.create(file=("blank.jsonl", content), purpose="fine-tune")
    assert e.value.body["code"] == "empty_file" and "holds no records" in e.value.message
    assert _files_dir(server) == before
    f = c.files.create(file=("padded.jsonl", content + b'{"text": "x"}\n'), purpose="fine-tune")
    assert f.bytes == len(content) + 14


def test_an_upload_under_the_limit_is_stored_byte_for_byte(server):
    c = client(server)
    data = os.urandom(UPLOAD_LIMIT - 10)  # any bytes, boundary-like sequences included
    data += b"\r\n--" + BOUNDARY.encode()[:5]
    f = c.files.create(file=("blob.bin", data), purpose="user_data")
    assert f.bytes == len(data) and c.files.content(f.id).content == data


def test_a_malformed_upload_form_is_a_client_error(server):
    auth = {"Authorization": f"Bearer {ALICE}"}
    r = httpx.post(f"{server.url}/files", headers=auth, files={"file": ("a.jsonl", b'{"text": "x"}\n')})
    err = r.json()["error"]
    assert r.status_code == 422 and err["param"] == "purpose" and err["code"] == "missing_required_parameter"
    r = httpx.post(f"{server.url}/files", headers=auth, json={"purpose": "fine-tune"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_content_type"
    assert "multipart/form-data" in r.json()["error"]["message"]


def _form(*parts: tuple[str, str, str | None], close: bool = True) -> bytes:
    out = ""
    for name, value, filename in parts:
        fn = f'; filename="{filename}"' if filename is not None else ""
        out += f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"{fn}\r\n\r\n{value}\r\n'
    return (out + (f"--{BOUNDARY}--\r\n" if close else "")).encode()


RECORD = '{"text": "x"}'


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (
            _form(("purpose", "fine-tune", None), ("file", RECORD, "a.jsonl"), close=False),
            "incomplete_upload",
        ),
        (
            _form(("file", RECORD, "a.jsonl"), ("file", RECORD, "b.jsonl"), ("purpose", "fine-tune", None)),
            "invalid_multipart",
        ),
        (_form(("file", RECORD, "notes.txt"), ("purpose", "fine-tune", None)), "invalid_file_format"),
        (_form(("purpose", "x" * 70_000, None), ("file", RECORD, "a.jsonl")), "field_too_large"),
        (b"not a multipart body at all", "invalid_multipart"),
    ],
    ids=["no-closing-boundary", "two-files", "purpose-after-a-bad-name", "huge-field", "garbage"],
)
def test_a_broken_multipart_body_is_a_400_and_leaves_nothing_behind(server, body, code):
    before = _files_dir(server)
    r = httpx.post(
        f"{server.url}/files",
        content=body,
        headers={
            "Authorization": f"Bearer {ALICE}",
            "Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
        },
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == code, r.text
    assert _files_dir(server) == before
