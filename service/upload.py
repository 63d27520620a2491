"""The request body of ``POST /v1/jobs``, streamed straight into the job's own upload folder.

Starlette's form parser spools files into the system temporary folder; this one writes each file part (or a raw
``application/zip`` body) to ``<job>/upload/part-NNNNNN`` as it arrives and stops reading at the first limit
crossed (bytes, files), so nothing of an upload is written outside its job's storage and an oversized upload is
refused before it is all read. Text fields (``bundle``, ``callback_url``) are kept in memory, 4 KiB at most.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request

from .errors import ServiceError

MULTIPART = "multipart/form-data"
ZIP_TYPES = ("application/zip", "application/x-zip-compressed", "application/x-zip")
# Content types a file part may declare (DICOM, zips, or nothing specific).
PART_TYPES = ("", "application/dicom", "application/octet-stream", *ZIP_TYPES)
TEXT_FIELDS = ("bundle", "callback_url")
MAX_FIELD_BYTES = 4096


@dataclass
class ReceivedUpload:
    fields: dict[str, str] = field(default_factory=dict)
    parts: int = 0
    bytes: int = 0


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


class _PartFile:
    """A file part's file in the job's upload folder, created by its first write or its close, i.e. on the thread
    pool with the writes (``_Receiver.flush``). Opened on the event loop, the files of 50 uploads took four fifths
    of its wall time under a burst of submissions (py-spy): an open is quick, but getting the GIL back after it
    waited on the threads checking other uploads, and every status poll waited behind that."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh = None

    def write(self, chunk: bytes) -> None:
        if self._fh is None:
            self._fh = self.path.open("wb")
        self._fh.write(chunk)

    def close(self) -> None:
        if self._fh is None:  # an empty part is still a file
            self._fh = self.path.open("wb")
        self._fh.close()

    def discard(self) -> None:
        """Close what is open (the upload failed): nothing more is created."""
        if self._fh is not None:
            self._fh.close()


class _Receiver:
    def __init__(self, folder: Path, max_bytes: int, max_files: int) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self.max_files = max_files
        self.result = ReceivedUpload()
        self._headers: dict[bytes, bytes] = {}
        self._name = b""
        self._value = b""
        self._field: str | None = None
        self._text = bytearray()
        self._file: _PartFile | None = None
        self._pending: list[tuple[_PartFile, bytes]] = []
        self.problem: ServiceError | None = None

    # python-multipart callbacks (synchronous: file writes are queued and done off the event loop)
    def on_part_begin(self) -> None:
        self._headers, self._field, self._text, self._file = {}, None, bytearray(), None

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[self._name.lower()] = self._value
        self._name, self._value = b"", b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        if b"filename" in options:
            ctype = self._headers.get(b"content-type", b"").decode("latin-1").split(";", 1)[0].strip().lower()
            if ctype not in PART_TYPES:
                raise ServiceError(
                    415,
                    "UNSUPPORTED_MEDIA_TYPE",
                    f"a file part is {ctype}: send DICOM files (application/dicom or application/octet-stream) or "
                    "one zip (application/zip)",
                )
            self.result.parts += 1
            if self.result.parts > self.max_files:
                raise ServiceError(413, "TOO_MANY_FILES", f"the upload holds more than {self.max_files} files")
            self._file = _PartFile(self.folder / f"part-{self.result.parts:06d}")
        elif name in TEXT_FIELDS:
            self._field = name
        else:
            raise ServiceError(
                400, "INVALID_REQUEST", f"unknown form field {name[:40]!r}: send files, bundle and callback_url"
            )

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self._file is not None:
            self.result.bytes += len(chunk)
            if self.result.bytes > self.max_bytes:
                raise ServiceError(413, "UPLOAD_TOO_LARGE", f"the upload exceeds {self.max_bytes} bytes")
            self._pending.append((self._file, bytes(chunk)))
        elif self._field is not None:
            self._text += chunk
            if len(self._text) > MAX_FIELD_BYTES:
                raise ServiceError(400, "INVALID_REQUEST", f"form field {self._field} is longer than 4 KiB")

    def on_part_end(self) -> None:
        if self._file is not None:
            self._pending.append((self._file, b""))  # b"": close after the writes queued before it
        elif self._field is not None:
            self.result.fields[self._field] = self._text.decode("utf-8", "replace").strip()

    def flush(self) -> None:
        for part, chunk in self._pending:
            if chunk:
                part.write(chunk)
            else:
                part.close()
        self._pending.clear()

    def close_all(self) -> None:
        for part, _ in self._pending:
            part.discard()
        self._pending.clear()
        if self._file is not None:
            self._file.discard()


async def receive_upload(request: Request, folder: Path, max_bytes: int, max_files: int) -> ReceivedUpload:
    """Stream the body into ``folder``; ``ServiceError`` for the wrong media type, malformed or oversized bodies."""
    kind = media_type(request)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes + 1024 * 1024:
        raise ServiceError(413, "UPLOAD_TOO_LARGE", f"the upload ({declared} bytes) exceeds {max_bytes} bytes")
    try:
        if kind in ZIP_TYPES:
            return await _receive_raw(request, folder, max_bytes)
        if kind == MULTIPART:
            return await _receive_multipart(request, folder, max_bytes, max_files)
    except ClientDisconnect:
        raise ServiceError(400, "INVALID_REQUEST", "the client disconnected before the upload was complete") from None
    raise ServiceError(
        415,
        "UNSUPPORTED_MEDIA_TYPE",
        f"the request is {kind or 'without a content type'}: send multipart/form-data (DICOM files or one zip) "
        "or an application/zip body",
    )


async def _receive_raw(request: Request, folder: Path, max_bytes: int) -> ReceivedUpload:
    result = ReceivedUpload(parts=1)
    part = _PartFile(folder / "part-000001")
    try:
        async for chunk in request.stream():
            result.bytes += len(chunk)
            if result.bytes > max_bytes:
                raise ServiceError(413, "UPLOAD_TOO_LARGE", f"the upload exceeds {max_bytes} bytes")
            await run_in_threadpool(part.write, chunk)
        await run_in_threadpool(part.close)
    finally:
        part.discard()
    result.fields.update({k: v for k, v in request.query_params.items() if k in TEXT_FIELDS})
    return result


async def _receive_multipart(request: Request, folder: Path, max_bytes: int, max_files: int) -> ReceivedUpload:
    _, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if not boundary:
        raise ServiceError(400, "INVALID_REQUEST", "the multipart body has no boundary")
    receiver = _Receiver(folder, max_bytes, max_files)
    callbacks = {
        name: getattr(receiver, name)
        for name in (
            "on_part_begin",
            "on_part_data",
            "on_part_end",
            "on_header_field",
            "on_header_value",
            "on_header_end",
            "on_headers_finished",
        )
    }
    parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
    try:
        async for chunk in request.stream():
            parser.write(chunk)
            if receiver._pending:
                await run_in_threadpool(receiver.flush)
        parser.finalize()
        await run_in_threadpool(receiver.flush)
    except FormParserError:
        raise ServiceError(400, "INVALID_REQUEST", "the multipart body is malformed") from None
    finally:
        receiver.close_all()
    for key, value in request.query_params.items():
        if key in TEXT_FIELDS:
            receiver.result.fields.setdefault(key, value)
    return receiver.result
