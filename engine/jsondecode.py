"""``json.loads`` of stored bytes, by orjson where that is provably the same.

orjson (compiled) parses the stored requests and outcomes several times faster than the
standard library, but it turns an integer beyond 64 bits into a float where ``json`` keeps the
integer, and it refuses a little that ``json`` accepts (NaN, lone surrogates). So a state holding
a run of 19 or more digits anywhere is parsed by ``json``, and so is anything orjson refuses:
what decodes, and to what, is exactly what ``json`` gives.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

_stdlib_decode = json.JSONDecoder().decode  # json.loads(bytes) would sniff the encoding on every call
_DIGITS = bytes(0x30 if 0x30 <= b <= 0x39 else 0x78 for b in range(256))  # digits → "0", else "x"
_LONG_NUMBER = b"0" * 19  # orjson makes a float of an integer this long that leaves 64 bits


def long_number(state: bytes) -> bool:
    """19 digits in a row anywhere (a number that may not fit 64 bits, or just a long digit run
    inside a string). Found by mapping every digit to "0" and the rest to "x": bytes.translate
    takes ~2 µs for a 1 KB outcome, a regular expression ~11."""
    return _LONG_NUMBER in state.translate(_DIGITS)


def loads(state: bytes) -> Any:
    if not long_number(state):
        try:
            return orjson.loads(state)
        except orjson.JSONDecodeError:
            pass  # json may still accept it (NaN, a lone surrogate) or say why not
    return _stdlib_decode(state.decode())
