"""A multipart upload (POST /v1/files) read straight into its file in the data directory, as the bytes arrive.

Starlette's form parser would first spool the file to the system's temporary directory (in memory up to 1 MB,
then on disk), whole, before the route could look at it, and the route would then copy it: twice the disk, in a
directory nobody sized for uploads, with the limit checked only at the end. Here the file part is written to one
file as it arrives, its own bytes are counted against the limit (413 at the first byte over), and the small form
fields stay in memory under a bound of their own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import python_multipart
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request

from tuneforge.serve.errors import bad_request
from tuneforge.serve.limits import file_too_large

FILE_FIELD = "file"
MAX_FIELD_BYTES = 64 * 1024  # a form field (purpose ...) is a word; only the file may be large
MAX_PARTS = 100
FLUSH_BYTES = 1 << 20  # file bytes gathered before one write (in a thread: a disk write may block)
BOM = b"\xef\xbb\xbf"


@dataclass
class Upload:
    fields: dict[str, str] = field(default_factory=dict)
    filename: str | None = None  # the client's name for the file part, as sent; None: no file part
    size: int = 0  # bytes of the file
    blank: bool = True  # the file holds nothing but whitespace (after a UTF-8 byte-order mark)
    complete: bool = False  # the file part's closing boundary arrived


async def receive_upload(
    request: Request,
    dest: Path,
    limit: int,
    on_file: Callable[[str, dict[str, str]], None] | None = None,
) -> Upload:
    """Write the body's `file` part to `dest` and return it with the form fields. `on_file(filename, fields so
    far)` runs when the file part's headers arrive, before its bytes, so that a route can refuse it early (it
    raises). The caller removes `dest` if this raises, or if it refuses the upload afterwards."""
    media, params = parse_options_header(request.headers.get("content-type"))
    if media != b"multipart/form-data" or not params.get(b"boundary"):
        given = request.headers.get("content-type")
        raise bad_request(
            "POST /v1/files takes a multipart/form-data body (a `file` part and a `purpose` field); this "
            + (
                f"request's Content-Type is {given!r}"
                if media != b"multipart/form-data"
                else "one has no boundary"
            )
            + ". With curl: -F purpose=fine-tune -F file=@train.jsonl",
            None,
            "invalid_content_type",
        )
    reader = _Reader(limit, on_file)
    with open(dest, "wb") as out:
        try:
            parser = python_multipart.MultipartParser(params[b"boundary"], reader.callbacks())
            async for chunk in request.stream():
                parser.write(chunk)
                if len(reader.pending) >= FLUSH_BYTES:
                    await run_in_threadpool(out.write, reader.take())
            parser.finalize()
        except ClientDisconnect:
            # The client went away, or the size limit cut the body off (the middleware has answered 413 then).
            raise bad_request(
                "The upload ended before its last byte arrived (the connection was closed): send it again.",
                FILE_FIELD,
                "incomplete_upload",
            ) from None
        except FormParserError as e:
            raise bad_request(
                f"The multipart body could not be read ({e}): send the file as multipart/form-data, e.g. "
                "with curl -F purpose=fine-tune -F file=@train.jsonl",
                None,
                "invalid_multipart",
            ) from None
        await run_in_threadpool(out.write, reader.take())
    if reader.upload.filename is not None and not reader.upload.complete:
        raise bad_request(
            "The multipart body ended inside the file part (its closing boundary never came): send it again.",
            FILE_FIELD,
            "incomplete_upload",
        )
    return reader.upload


class _Reader:
    """The parser's callbacks: the file's bytes into `pending` (counted), form fields into `upload.fields`."""

    def __init__(self, limit: int, on_file: Callable[[str, dict[str, str]], None] | None):
        self.limit, self.on_file = limit, on_file
        self.upload = Upload()
        self.pending = bytearray()
        self.parts = 0
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._disposition = b""
        self._kind = "skip"  # of the current part: "file", "field" or "skip" (a file part under another name)
        self._name = ""
        self._data = bytearray()
        self._head: bytes | None = b""  # the file's first bytes while they may still be a byte-order mark

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
        }

    def take(self) -> bytes:
        data = bytes(self.pending)
        self.pending.clear()
        return data

    def on_part_begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise bad_request(
                f"The form has more than {MAX_PARTS} parts: send one `file` part and a `purpose` field.",
                None,
                "too_many_parts",
            )
        self._disposition, self._data = b"", bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            self._disposition = bytes(self._header_value)
        self._header_name, self._header_value = bytearray(), bytearray()

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if b"name" not in options:
            raise bad_request(
                'A part of the form has no name: each part needs Content-Disposition: form-data; name="...".',
                None,
                "invalid_multipart",
            )
        self._name = _decode(options[b"name"])
        if self._name == FILE_FIELD:
            if self.upload.filename is not None:
                raise bad_request(
                    "Send one file per upload (this form has two `file` parts).",
                    FILE_FIELD,
                    "invalid_multipart",
                )
            # curl -F 'file=<train.jsonl' sends the content without a filename: take it, with no name.
            self.upload.filename = _decode(options.get(b"filename", b""))
            self._kind = "file"
            if self.on_file is not None:
                self.on_file(self.upload.filename, dict(self.upload.fields))
        elif b"filename" in options:
            self._kind = "skip"  # a file under another name: not ours (as a form field FastAPI would ignore)
        else:
            self._kind = "field"

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self._kind == "file":
            self.upload.size += len(chunk)
            if self.upload.size > self.limit:
                raise file_too_large(self.limit)
            self._see(chunk)
            self.pending += chunk
        elif self._kind == "field":
            if len(self._data) + len(chunk) > MAX_FIELD_BYTES:
                raise bad_request(
                    f"The form field {self._name!r} is over {MAX_FIELD_BYTES:,} bytes: only the file part may "
                    "be large.",
                    self._name,
                    "field_too_large",
                )
            self._data += chunk

    def on_part_end(self) -> None:
        if self._kind == "file":
            self.upload.complete = True
            if self._head:  # a file shorter than a byte-order mark
                self.upload.blank = not self._head.removeprefix(BOM).strip()
        elif self._kind == "field":
            self.upload.fields[self._name] = _decode(self._data)

    def _see(self, chunk: bytes) -> None:
        """Track whether the file is whitespace only, allowing a leading UTF-8 byte-order mark."""
        if not self.upload.blank:
            return
        if self._head is not None:
            head = self._head + chunk
            if len(head) < len(BOM) and BOM.startswith(head):
                self._head = head  # may still be a byte-order mark cut across two chunks
                return
            self._head, chunk = None, head.removeprefix(BOM)
        if chunk.strip():
            self.upload.blank = False


def _decode(raw: bytes | bytearray) -> str:
    """Header options come as latin-1 bytes of what the client sent, in practice UTF-8 (read as Starlette does)."""
    try:
        return bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        return bytes(raw).decode("latin-1")
