"""References as a client writes them and as they cross the wire."""

from __future__ import annotations

from pathlib import Path

import msgpack
import pytest

from dlhub_hpc.errors import ProtocolError, ReferenceFormatError
from dlhub_hpc.protocol import PROTOCOL_VERSION, REF_EXT, Request, Tag, decode, encode
from dlhub_hpc.references import FileRef, URLRef, has_references, parse_cli


def test_references_cross_the_wire_anywhere_in_an_input() -> None:
    payload = {"frame": FileRef("/lus/proj/frame.npy"),
               "more": [1, [URLRef("https://example.org/x.npy")]]}
    msg = decode(encode(Request("r", "alice/seg", None, "run", payload,
                                result_to="/lus/proj/out.npy")))
    assert isinstance(msg, Request)
    assert msg.payload == payload and msg.result_to == "/lus/proj/out.npy"
    assert has_references(msg.payload)


def test_a_request_without_result_to_stays_as_before_on_the_wire() -> None:
    header = msgpack.unpackb(encode(Request("r", "a/b", None, "run", [1]))[0])
    assert len(header) == 2 + 7  # as before result_to: the unset fields left off


@pytest.mark.parametrize("record", [
    msgpack.packb(["file", "relative/path"]),
    msgpack.packb(["ftp", "/x"]),
    msgpack.packb(["url", "file:///etc/shadow"]),
    msgpack.packb(["file"]),
    b"\xc1",
    msgpack.packb(["file", "/x", "a-token"]),  # only a URL carries a token
    msgpack.packb(["url", "https://h/x", "a token\r\nX-Injected: 1"]),
    msgpack.packb(["url", "https://h/x", 7]),
    msgpack.packb(["url", "https://h/x", "t", "more"]),
])
def test_a_malformed_reference_record_is_a_protocol_error(record: bytes) -> None:
    ext = msgpack.ExtType(REF_EXT, record)
    header = msgpack.packb([PROTOCOL_VERSION, int(Tag.REQUEST), "r", "a/b", None, "run", ext])
    with pytest.raises(ProtocolError):
        decode([header])


@pytest.mark.parametrize(("make", "target"), [
    (FileRef, "frame.npy"), (FileRef, "/a\x00b"), (FileRef, ""),
    (URLRef, "file:///etc/passwd"), (URLRef, "https:///nohost"), (URLRef, "gopher://h/x"),
    (URLRef, "http://127.0.0.1/x.npy"), (URLRef, "https://example.org:99999/x"),
    (URLRef, "https://example.org:port/x"),
])
def test_references_refuse_what_cannot_name_a_file_or_url(make: type, target: str) -> None:
    with pytest.raises(ReferenceFormatError):
        make(target)


def test_a_url_token_crosses_the_wire_and_is_never_shown() -> None:
    ref = URLRef("https://g-1a2b.data.globus.org/f.npy", "Ag1.b-c_d~e+f/g==")
    msg = decode(encode(Request("r", "a/b", None, "run", [ref])))
    assert isinstance(msg, Request)
    assert msg.payload == [ref] and msg.payload[0].token == "Ag1.b-c_d~e+f/g=="
    assert "Ag1" not in repr(ref) and "Ag1" not in str(ref)
    assert URLRef("https://h/x") != URLRef("https://h/x", "other")
    # a reference without a token is the two-element record it always was
    assert msgpack.unpackb(encode(Request("r", "a/b", None, "run", URLRef("https://h/x")))[0],
                           ext_hook=lambda code, data: msgpack.unpackb(data))[6] == [
        "url", "https://h/x"]


@pytest.mark.parametrize("token", ["", "two words", "line\nbreak", "x\r\nHost: evil",
                                   "é", "a" * 8193, "=abc"])
def test_a_token_that_could_break_its_header_is_refused(token: str) -> None:
    with pytest.raises(ReferenceFormatError, match="bearer token") as caught:
        URLRef("https://h/x", token)
    assert token not in caught.value.message or not token


def test_a_path_object_is_taken_and_the_suffix_picks_the_format(tmp_path: Path) -> None:
    ref = FileRef(tmp_path / "a.npy")  # type: ignore[arg-type]
    assert ref.path == str(tmp_path / "a.npy") and ref.is_npy
    assert not FileRef("/x/a.bin").is_npy
    assert URLRef("https://h/data/a.npy?x=1").is_npy


def test_the_cli_form() -> None:
    assert parse_cli("@ref:/lus/a.npy") == FileRef("/lus/a.npy")
    assert parse_cli("@ref:https://h/a") == URLRef("https://h/a")
    assert parse_cli("[1, 2]") is None


def test_has_references_finds_nested_ones_and_not_plain_data() -> None:
    assert not has_references([1.0] * 1000 + [[1, {"a": "b"}]])
    assert has_references([[1], {"a": [2, {"b": FileRef("/x")}]}])
