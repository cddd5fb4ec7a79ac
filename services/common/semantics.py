"""HTTP semantics shared by every service (RFC 9110 methods and preconditions, RFC 7396 merge patch,
RFC 8288 links), framework-free. Each service's adapter feeds it headers and bytes and turns the Problems it
raises into responses.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlencode

from services.common.http import JSON, Problem

MERGE_PATCH_JSON = "application/merge-patch+json"
MAX_BODY_BYTES = 64 * 1024
# Deeper documents are refused: Python's parser and encoder recurse, so a few thousand "[" would otherwise
# end as a RecursionError (a 500) here or in whatever walks the document next (merge patch, the reply).
MAX_JSON_DEPTH = 64


@dataclass(frozen=True)
class MethodTraits:
    safe: bool
    idempotent: bool


# The seed's table: what a client (and nginx's retry logic) may assume about each method.
METHODS: dict[str, MethodTraits] = {
    "OPTIONS": MethodTraits(safe=True, idempotent=True),
    "GET": MethodTraits(safe=True, idempotent=True),
    "HEAD": MethodTraits(safe=True, idempotent=True),
    "PUT": MethodTraits(safe=False, idempotent=True),
    "DELETE": MethodTraits(safe=False, idempotent=True),
    "POST": MethodTraits(safe=False, idempotent=False),
    "PATCH": MethodTraits(safe=False, idempotent=False),
}


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def content_coded(content_encoding: str | None) -> bool:
    """True when a Content-Encoding names a coding other than identity (RFC 9110 8.4)."""
    if not content_encoding:
        return False
    return any(coding.strip().lower() not in ("", "identity") for coding in content_encoding.split(","))


def json_body(content_type: str | None, body: bytes, accepted: tuple[str, ...] = (JSON,),
              content_encoding: str | None = None) -> object:
    """The request's JSON document, or the Problem a client should see: 413, 415 or 400. No service here
    decodes a content-coded request body (RFC 9110 15.5.16: 415, with Accept-Encoding saying what it takes)."""
    if content_coded(content_encoding):
        raise Problem(415, "Unsupported Media Type",
                      f"request bodies are taken without a content coding, not {content_encoding[:40]!r}",
                      headers={"Accept-Encoding": "identity"})
    if len(body) > MAX_BODY_BYTES:
        raise Problem(413, "Content Too Large", f"request bodies are limited to {MAX_BODY_BYTES} bytes")
    if media_type(content_type) not in accepted:
        raise Problem(415, "Unsupported Media Type",
                      f"send the body as {' or '.join(accepted)}, not {media_type(content_type) or 'nothing'}")
    try:
        return parse_json(body)
    except ValueError as error:
        raise Problem(400, "Malformed JSON", f"the body is not valid JSON: {error}") from None


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON (RFC 8259 has no NaN or Infinity)")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:20]} is beyond a double's range")
    return value


def _deeper_than(document: object, limit: int) -> bool:
    """Nesting depth above `limit`, walked with a list rather than recursion."""
    pending = [(document, 1)]
    while pending:
        value, depth = pending.pop()
        if depth > limit:
            return True
        children = value.values() if isinstance(value, dict) else value
        pending.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def parse_json(body: bytes, unicode_scalars_only: bool = True) -> object:
    """RFC 8259 JSON and nothing looser: no NaN/Infinity, numbers a double can hold, at most MAX_JSON_DEPTH
    levels, UTF-8, and (unless told otherwise) strings of Unicode scalar values: a "\\ud800" escape alone is a
    lone surrogate, which no UTF-8 text can hold, so nothing could store, hash or send it back (RFC 8259 8.2).
    Anything else is a ValueError (callers answer 400, or treat the body as not JSON)."""
    try:
        document = json.loads(body, parse_constant=_no_constant, parse_float=_finite)
    except RecursionError:
        raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels") from None
    # Cheap first: a document cannot be deeper than it has brackets.
    brackets = body.count(b"[") + body.count(b"{")
    if isinstance(document, (dict, list)) and brackets > MAX_JSON_DEPTH and _deeper_than(document, MAX_JSON_DEPTH):
        raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels")
    if unicode_scalars_only and b"\\u" in body and _has_lone_surrogate(document):
        raise ValueError("a string holds a lone surrogate (an unpaired \\ud800-\\udfff escape): not Unicode text")
    return document


def _has_lone_surrogate(document: object) -> bool:
    """Any string (member names too) with a code point in U+D800..U+DFFF: json.loads pairs valid escapes."""
    pending = [document]
    while pending:
        value = pending.pop()
        if isinstance(value, str):
            if LONE_SURROGATE.search(value):
                return True
        elif isinstance(value, dict):
            pending.extend(value.keys())
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)
    return False


# A code point no UTF-8 text holds: half of a UTF-16 pair, alone (a "\ud800" escape, or undecodable bytes that
# aiohttp keeps as surrogate escapes).
LONE_SURROGATE = re.compile("[\ud800-\udfff]")

# RFC 9110 12.4.2's qvalue: 0 to 1 with at most three decimals. Anything else ("nan", "inf", "2") weighs 0.
_QVALUE = re.compile(r"0(\.[0-9]{0,3})?|1(\.0{0,3})?")


def media_ranges(accept: str) -> list[tuple[str, float]]:
    """An Accept header's media ranges with their weights (q=1 unless given; a malformed q counts as 0)."""
    ranges = []
    for media_range in accept.split(","):
        name, *params = [part.strip() for part in media_range.split(";")]
        quality = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                value = value.strip()
                quality = float(value) if _QVALUE.fullmatch(value) else 0.0
        ranges.append((name.lower(), quality))
    return ranges


def require_acceptable(accept: str | None, offered: str = JSON) -> None:
    """406 when the client's Accept rules out the one media type this resource speaks (RFC 9110 12.5.1)."""
    if not accept or not accept.strip():
        return
    if negotiate(accept, [offered]) is None:
        raise Problem(406, "Not Acceptable", f"this resource is only available as {offered}; your Accept: {accept}")


def negotiate(accept: str | None, offered: list[str], wildcard_choice: str | None = None) -> str | None:
    """The offered media type the client prefers (RFC 9110 12.5.1). Each type weighs what its most specific
    matching range says (so "image/png;q=0, */*" rules PNG out); the heaviest wins, a type the client named
    before one it only matched by a wildcard, then the order offered. When the winner was matched by a wildcard
    only, `wildcard_choice` is taken instead if it weighs as much. None when the client accepts none of them.
    No Accept at all accepts anything: `wildcard_choice`, else the first offered."""
    if not accept or not accept.strip():
        return wildcard_choice or offered[0]
    ranges = media_ranges(accept)
    weights: dict[str, tuple[float, int]] = {}  # media type -> (quality, specificity of the range that set it)
    for media_type in offered:
        kind = media_type.partition("/")[0]
        for name, quality in ranges:
            specificity = 2 if name == media_type else 1 if name == f"{kind}/*" else 0 if name == "*/*" else -1
            if specificity > weights.get(media_type, (0.0, -1))[1]:
                weights[media_type] = (quality, specificity)
    acceptable = [(weights[t][0], weights[t][1], -order, t) for order, t in enumerate(offered)
                  if t in weights and weights[t][0] > 0]
    if not acceptable:
        return None
    quality, specificity, _, choice = max(acceptable)
    if specificity < 2 and wildcard_choice in weights and weights[wildcard_choice][0] == quality:
        return wildcard_choice
    return choice


def strong_etag(representation: object) -> str:
    """A strong validator: it changes whenever the representation's bytes would."""
    canonical = json.dumps(representation, sort_keys=True, separators=(",", ":")).encode()
    return '"' + hashlib.sha256(canonical).hexdigest()[:32] + '"'


def _tags(header: str) -> list[str]:
    return [tag.strip() for tag in header.split(",") if tag.strip()]


def _weak_equal(a: str, b: str) -> bool:
    return a.removeprefix("W/") == b.removeprefix("W/")


def if_none_match_hit(header: str | None, current: str | None) -> bool:
    """True when a GET/HEAD may answer 304 (weak comparison, RFC 9110 13.1.2)."""
    if not header or current is None:
        return False
    return header.strip() == "*" or any(_weak_equal(tag, current) for tag in _tags(header))


def check_if_match(header: str | None, current: str | None, required: bool) -> None:
    """Guard a state-changing request against lost updates (strong comparison, RFC 9110 13.1.1).

    Raises 428 when the resource demands a precondition and none was sent, 412 when it does not hold.
    """
    if header is None:
        if required and current is not None:
            raise Problem(428, "Precondition Required",
                          "send If-Match with the ETag you last saw, so that no update is lost")
        return
    if header.strip() == "*":
        if current is None:
            raise Problem(412, "Precondition Failed", "If-Match: * but the resource does not exist")
        return
    if current is None or not any(tag == current and not tag.startswith("W/") for tag in _tags(header)):
        raise Problem(412, "Precondition Failed", "the resource changed since that ETag: GET it again")


def check_if_none_match_for_write(header: str | None, current: str | None) -> None:
    """`If-None-Match: *` on PUT means "create only": 412 when something already exists."""
    if header and current is not None and (header.strip() == "*" or current in _tags(header)):
        raise Problem(412, "Precondition Failed", "the resource already exists")


def check_replace(if_match: str | None, if_none_match: str | None, current: str | None, required: bool,
                  already_applied: bool) -> bool:
    """The preconditions of a PUT (create-only `If-None-Match: *`, then `If-Match`). Returns True when the
    If-Match is stale but the state it asks for is already there: a retry whose first attempt applied and whose
    response was lost, which RFC 9110 13.1.1 lets succeed (200 with the current state) rather than fail (412)."""
    check_if_none_match_for_write(if_none_match, current)
    try:
        check_if_match(if_match, current, required)
    except Problem as failed:
        if failed.status == 412 and already_applied:
            return True
        raise
    return False


def merge_patch(target: object, patch: object) -> object:
    """RFC 7396 JSON Merge Patch: null deletes a member, objects merge recursively, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def link_header(path: str, query: Mapping[str, str], rels: Mapping[str, Mapping[str, str] | None]) -> str | None:
    """An RFC 8288 Link header: one entry per relation whose query overrides are given (None: omitted)."""
    links = []
    for rel, overrides in rels.items():
        if overrides is None:
            continue
        params = {k: v for k, v in {**query, **overrides}.items() if v not in (None, "")}
        links.append(f'<{path}?{urlencode(params)}>; rel="{rel}"')
    return ", ".join(links) or None


def page_link(path: str, limit: int, next_cursor: str | None) -> str:
    """The Link header of one page of a keyset-paginated listing: rel=first, and rel=next while more follow."""
    return link_header(path, {"limit": str(limit)},
                       {"first": {"cursor": ""}, "next": {"cursor": next_cursor} if next_cursor else None}) or ""


def allow_header(methods: list[str]) -> str:
    """The Allow value for a resource: what it implements, in the seed table's order, HEAD with GET."""
    present = set(methods) | ({"HEAD"} if "GET" in methods else set()) | {"OPTIONS"}
    return ", ".join(m for m in METHODS if m in present)
