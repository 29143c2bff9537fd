"""Writes test/fixtures/canonical-args.json: args lists and the bytes Python's codec makes of them.

Each vector's `input` is a JSON text that every client parses with its own standard JSON
parser and then encodes with its canonical args encoder; `expected` is what the Python
client's `encode_args` gives (`json.dumps(list(args), separators=(",", ":"), sort_keys=True)`).
The Node, Python and Rust test suites each check their codec against this file, so the
three agree byte for byte. Inputs avoid what the languages cannot all represent: integral
floats (JavaScript has no 1.0 apart from 1), integers past 2^53, and, for Rust (`rust:
false`), lone surrogates. Run with any Python 3: `python3 scripts/gen-vectors.py`.
"""

import json
from pathlib import Path

INPUTS = [
    ("one string", '["bob"]'),
    ("several", '["bob",3,true,false,null]'),
    ("no args", "[]"),
    ("a list argument", "[[1,2]]"),
    ("keys sorted", '[{"z":1,"a":2,"m":{"y":[],"b":{}}}]'),
    ("spaces dropped", '[ "a" , { "k" : [ 1 , 2 ] } ]'),
    ("escapes", '["a\\"b\\\\c\\n\\t\\u0001\\u007f\\u00e9\\u20ac\\ud83d\\ude00"]'),
    ("short escapes", '["\\b\\f\\r/"]'),
    ("nul and separators", '["\\u0000\\u2028\\u2029\\u001f ~"]'),
    ("non-ASCII as text", '["café", "日本", "😀"]'),
    ("keys by code point", '[{"😀":1,"\\uffff":2,"é":3,"e":4,"E":5,"":6}]'),
    ("floats fixed", "[1.5,0.1,0.0001,123456.789,-0.5,0.30000000000000004,123456789012.25]"),
    ("floats exponent", "[0.00001,1.5e-7,1e16,1.2345e22,-2.5e100,5e-324,1.7976931348623157e308,1.23e-20]"),
    ("integers", "[-42,0,9007199254740991,-9007199254740991]"),
    ("mixed", '["bob",{"page":2,"tags":["x","y"],"ratio":2.5}]'),
]

PYTHON_ONLY = [
    ("lone surrogates", '["\\ud800x\\udfff"]'),
]


def vector(name: str, text: str, rust: bool) -> dict:
    args = json.loads(text)
    expected = json.dumps(list(args), separators=(",", ":"), sort_keys=True)
    return {"name": name, "input": text, "expected": expected, "rust": rust}


if __name__ == "__main__":
    vectors = [vector(n, t, True) for n, t in INPUTS] + [vector(n, t, False) for n, t in PYTHON_ONLY]
    out = Path(__file__).resolve().parents[1] / "test" / "fixtures" / "canonical-args.json"
    out.write_text(json.dumps(vectors, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
