"""``json.loads`` of stored bytes, by orjson where that is provably the same.

orjson (compiled) parses the stored requests and outcomes several times faster than the
standard library, but it turns an integer beyond 64 bits into a float where ``json`` keeps the
integer, and it refuses a little that ``json`` accepts (NaN, lone surrogates). So a document
whose orjson parse holds a float anywhere is parsed again by ``json``, and so is anything
orjson refuses: what decodes, and to what, is exactly what ``json`` gives. The stored events
hold no floats (amounts are integers or decimal strings), so the second parse is only ever for
an integer beyond 64 bits (an 18-decimal asset's amounts), or for odd input.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

_stdlib_decode = json.JSONDecoder().decode  # json.loads(bytes) would sniff the encoding on every call


def has_float(value: Any) -> bool:
    """A float anywhere in a parsed JSON value. Walking the parsed values costs a fraction of
    scanning the bytes for long digit runs first (``bytes.translate`` over every byte), which
    is how this was decided before: ~2,500 instructions a stored request. Two loops, not one
    over an iterable: compiled, each is then the native walk of a dict's values or a list."""
    if isinstance(value, dict):
        for item in value.values():
            kind = type(item)
            if kind is float or ((kind is dict or kind is list) and has_float(item)):
                return True
        return False
    if isinstance(value, list):
        for item in value:
            kind = type(item)
            if kind is float or ((kind is dict or kind is list) and has_float(item)):
                return True
        return False
    return type(value) is float


def loads(state: bytes) -> Any:
    try:
        value = orjson.loads(state)
    except orjson.JSONDecodeError:  # json may still accept it (NaN, a lone surrogate) or say why not
        return _stdlib_decode(state.decode())
    if has_float(value):  # orjson's float for an integer beyond 64 bits, or a real one: json decides
        return _stdlib_decode(state.decode())
    return value
