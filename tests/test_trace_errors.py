"""Malformed trace files: each case gives its own one-line message naming the file, line and
column, and ``servesim`` exits with status 2; nothing passes as a partial read."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from simulator.cli import main
from traces import WorkloadError
from traces.loaders import read_trace

AZURE_HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"
ROW1 = "2023-11-16 18:15:46.6805900,374,44\n"
ROW2 = "2023-11-16 18:15:50.9951690,396,109\n"
ROW3 = "2023-11-16 18:15:51.2224670,879,31\n"


def azure(tmp_path, text, name="t.csv"):
    p = tmp_path / name
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return p


# (file content, the message it must give; {f} is the file's path)
CSV_CASES = {
    "misnamed column": (
        "TIMESTAMP,ContextToken,GeneratedTokens\n" + ROW1,
        "{f} line 1: missing column 'ContextTokens' for format azure (did you mean "
        "'ContextToken'?); found columns: 'TIMESTAMP', 'ContextToken', 'GeneratedTokens'"),
    "non-numeric value": (
        AZURE_HEADER + ROW1 + "2023-11-16 18:15:50.9951690,396,lots\n",
        "{f} line 3, column 'GeneratedTokens': expected a number, got 'lots'"),
    "negative value": (
        AZURE_HEADER + ROW1 + ROW2 + "2023-11-16 18:15:51.2224670,-879,31\n",
        "{f} line 4, column 'ContextTokens': negative value -879"),
    "missing value": (
        AZURE_HEADER + ROW1 + "2023-11-16 18:15:50.9951690,396\n",
        "{f} line 3, column 'GeneratedTokens': missing value"),
    "fractional tokens": (
        AZURE_HEADER + "2023-11-16 18:15:46.6805900,374.5,44\n",
        "{f} line 2, column 'ContextTokens': expected a whole number of tokens, got 374.5"),
    "bad timestamp": (
        AZURE_HEADER + ROW1 + "yesterday,396,109\n",
        "{f} line 3, column 'TIMESTAMP': expected a date-time like 2023-11-16 "
        "18:15:46.6805900, got 'yesterday'"),
    "too many fields": (
        AZURE_HEADER + ROW1 + "2023-11-16 18:15:50.9951690,396,109,7\n",
        "{f}: malformed CSV: Expected 3 fields in line 3, saw 4"),
    "blank lines counted": (
        AZURE_HEADER + "\n" + ROW1 + "\n\n" + "2023-11-16 18:15:50.9951690,x,109\n",
        "{f} line 6, column 'ContextTokens': expected a number, got 'x'"),
    "empty file": ("", "{f}: empty file"),
    "blank file": ("\n\n", "{f}: empty file (no non-blank line)"),
    "header only": (AZURE_HEADER, "{f}: no requests (the file has a header but no records)"),
    "tokens beyond int64": (
        AZURE_HEADER + "2023-11-16 18:15:46.6805900,9223372036854775808,44\n",
        "{f} line 2, column 'ContextTokens': 9223372036854775808 tokens, more than the "
        "1,000,000,000 a request may have"),
    "1e150 tokens": (
        AZURE_HEADER + ROW1 + "2023-11-16 18:15:50.9951690,396,1e150\n",
        "{f} line 3, column 'GeneratedTokens': 1e+150 tokens, more than the 1,000,000,000 a "
        "request may have"),
    "column given twice": (
        "TIMESTAMP,ContextTokens,GeneratedTokens,ContextTokens\n" + ROW1,
        "{f} line 1: column 'ContextTokens' appears twice (columns 2 and 4); rename one"),
    "not UTF-8": (
        AZURE_HEADER.encode() + b"2023-11-16 18:15:46.6805900,374,44\n\xe9\n",
        "{f} line 3: not UTF-8 text (byte 0xe9: invalid continuation byte); save it as UTF-8"),
    "NUL bytes": (
        AZURE_HEADER.encode() + b"\0" * 5000,
        "{f} line 2: a NUL byte: binary data, not a CSV or JSON Lines trace (UTF-16 text? save "
        "it as UTF-8)"),
    "unknown columns": (
        "when,in,out\n1,2,3\n",
        "{f}: cannot tell the trace format from its columns ('when', 'in', 'out'); give "
        "--format (azure, mooncake, vllm-trace, vidur, vidur-lengths, burstgpt, vllm-custom, "
        "generic), or map columns with -T prompt=COL -T output=COL [-T arrival=COL]"),
}


@pytest.mark.parametrize("case", list(CSV_CASES))
def test_malformed_csv_gives_its_message(tmp_path, case):
    text, message = CSV_CASES[case]
    f = azure(tmp_path, text)
    with pytest.raises(WorkloadError) as e:
        read_trace(f)
    assert str(e.value) == message.format(f=f)


JSONL_CASES = {
    "line that does not parse": (
        ['{"timestamp": 0, "input_length": 5, "output_length": 2, "hash_ids": [1]}',
         '{"timestamp": 10, "input_length": 5, "output_length": 2, "hash_ids": [1]}',
         '{"timestamp": 20, "input_length": 5, "output_length": 2, "hash_ids": [1]'],
        "{f} line 3: not valid JSON (Expecting ',' delimiter, column 73)"),
    "not an object": (
        ['{"timestamp": 0, "input_length": 5, "output_length": 2}', "[1, 2]"],
        "{f} line 2: expected a JSON object, got list"),
    "field missing": (
        ['{"timestamp": 0, "input_length": 5, "output_length": 2}',
         '{"timestamp": 1, "output_length": 2}'],
        "{f} line 2, column 'input_length': missing value"),
    "string length": (
        ['{"timestamp": 0, "input_length": 5, "output_length": 2}',
         '{"timestamp": 1, "input_length": "many", "output_length": 2}'],
        "{f} line 2, column 'input_length': expected a number, got 'many'"),
    "null length after blank line": (
        ['{"timestamp": 0, "input_length": 5, "output_length": 2}', "",
         '{"timestamp": 1, "input_length": 5, "output_length": null}'],
        "{f} line 3, column 'output_length': missing value"),
    "boolean length": (
        ['{"timestamp": 0, "input_length": true, "output_length": 2}'],
        "{f} line 1, column 'input_length': expected a number, got True"),
    "tokens beyond int64": (
        ['{"timestamp": 0, "input_length": 5, "output_length": 2}',
         '{"timestamp": 1, "input_length": 99999999999999999999999, "output_length": 2}'],
        "{f} line 2, column 'input_length': 99999999999999999999999 tokens, more than the "
        "1,000,000,000 a request may have"),
    "arrival near 1e300": (
        ['{"timestamp": 0, "input_length": 5, "output_length": 2}',
         '{"timestamp": 1e300, "input_length": 5, "output_length": 2}'],
        "{f} line 2, column 'timestamp': time 1e+300 (1e+297 s) is beyond 2^33 s (272 years), "
        "where float64 seconds would lose microseconds (a wrong time unit?)"),
    "number as text": (
        ['{"timestamp": 0, "input_length": "12", "output_length": 2}'],
        "{f} line 1, column 'input_length': expected a number, got '12' (a number written as "
        "text: drop the quotes)"),
    "hash_ids as text": (
        ['{"timestamp": 0, "input_length": 5, "output_length": 2, "hash_ids": [1, 2]}',
         '{"timestamp": 1, "input_length": 5, "output_length": 2, "hash_ids": "3,4"}'],
        "{f} line 2, column 'hash_ids': expected a list of integers (block hashes), got '3,4'"),
    "more hash_ids than blocks": (
        ['{"timestamp": 0, "input_length": 1024, "output_length": 2, "hash_ids": [1, 2]}',
         '{"timestamp": 1, "input_length": 1100, "output_length": 2, "hash_ids": [1, 2, 3, 4]}'],
        "{f} line 2, column 'hash_ids': 4 block hashes for a prompt of 1100 tokens: at most 3, "
        "one per 512 tokens"),
    "hash id beyond 64 bits": (
        ['{"timestamp": 0, "input_length": 1024, "output_length": 2, '
         '"hash_ids": [0, 9223372036854775808]}'],
        "{f} line 1, column 'hash_ids': block hash 9223372036854775808 is outside the signed "
        "64-bit range [-2^63, 2^63)"),
    "key given twice": (
        ['{"timestamp": 0, "input_length": 5, "output_length": 2}',
         '{"timestamp": 1, "input_length": 5, "output_length": 2, "input_length": 6}'],
        "{f} line 2: key 'input_length' appears twice in one record"),
    "prompt not text": (
        ['{"prompt": 5, "output_tokens": 3}', '{"prompt": 6, "output_tokens": 3}'],
        "{f} line 1, column 'prompt': expected text, got 5"),
}


@pytest.mark.parametrize("case", list(JSONL_CASES))
def test_malformed_jsonl_gives_its_message(tmp_path, case):
    lines, message = JSONL_CASES[case]
    f = tmp_path / "t.jsonl"
    f.write_text("\n".join(lines) + "\n")
    with pytest.raises(WorkloadError) as e:
        read_trace(f)
    assert str(e.value) == message.format(f=f)


def test_damaged_parquet_is_one_line(tmp_path):
    import pandas as pd
    good = tmp_path / "good.parquet"
    pd.DataFrame({"arrived_at": [0.0, 1.0], "num_prefill_tokens": [1, 2],
                  "num_decode_tokens": [3, 4]}).to_parquet(good)
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(good.read_bytes()[:-40])
    with pytest.raises(WorkloadError) as e:
        read_trace(cut)
    assert str(e.value).startswith(f"{cut}: not a readable Parquet file, damaged or truncated (")
    pd.DataFrame({"a": [1.5], "b": ["x"]}).to_parquet(foreign := tmp_path / "foreign.parquet")
    with pytest.raises(WorkloadError, match=r"cannot tell the trace format from its columns "
                                            r"\('a', 'b'\)"):
        read_trace(foreign)


def test_truncated_gzip_is_rejected_not_read_partially(tmp_path):
    whole = tmp_path / "whole.csv.gz"
    with gzip.open(whole, "wt") as out:
        out.write(AZURE_HEADER + ROW1 * 2000)
    cut = tmp_path / "cut.csv.gz"
    cut.write_bytes(whole.read_bytes()[:-200])
    assert len(read_trace(whole)) == 2000
    with pytest.raises(WorkloadError, match=r"cut.csv.gz: the gzip stream is truncated"):
        read_trace(cut)
    jl = tmp_path / "cut.jsonl.gz"
    with gzip.open(jl, "wt") as out:
        out.write('{"timestamp": 0, "input_length": 5, "output_length": 2}\n' * 5000)
    jl.write_bytes(jl.read_bytes()[:-100])
    with pytest.raises(WorkloadError, match=r"the gzip stream is truncated"):
        read_trace(jl)


def test_unsorted_timestamps_sorted_with_warning_or_rejected_when_strict(tmp_path):
    f = azure(tmp_path, AZURE_HEADER + ROW2 + ROW1 + ROW3)
    w = read_trace(f)
    assert w.frame["prompt_tokens"].tolist() == [374, 396, 879]
    np.testing.assert_allclose(w.frame["arrival_s"], [0, 4.314579, 4.541877])
    assert w.meta["warnings"] == [f"timestamps not sorted (1 steps back, first at {f} line 3); "
                                  f"requests sorted by arrival time"]
    with pytest.raises(WorkloadError) as e:
        read_trace(f, strict=True)
    assert str(e.value) == (f"{f} line 3: timestamp earlier than the previous request's "
                            f"(unsorted trace; sort it, or replay without --strict)")


def test_zero_token_requests_dropped_with_warning_or_rejected_when_strict(tmp_path):
    f = azure(tmp_path, AZURE_HEADER + ROW1 + "2023-11-16 18:15:50.9951690,0,109\n" + ROW3)
    w = read_trace(f)
    assert len(w) == 2 and w.meta["dropped"] == {"zero_tokens": 1}
    assert "dropped 1 requests with 0 prompt or output tokens" in w.meta["warnings"][0]
    with pytest.raises(WorkloadError, match=r"line 3: prompt of 0 tokens"):
        read_trace(f, strict=True)


def test_a_zero_token_request_with_hash_ids_is_dropped_not_refused(tmp_path):
    """The block-count check leaves a prompt of 0 tokens to the common drop (and its warning)."""
    f = tmp_path / "z.jsonl"
    f.write_text('{"timestamp": 0, "input_length": 1024, "output_length": 2, "hash_ids": [1, 2]}\n'
                 '{"timestamp": 1, "input_length": 0, "output_length": 2, "hash_ids": [3]}\n'
                 '{"timestamp": 2, "input_length": 600, "output_length": 2, "hash_ids": [1, 4]}\n')
    w = read_trace(f)
    assert len(w) == 2 and w.meta["dropped"] == {"zero_tokens": 1}


def test_unknown_format_and_options(tmp_path):
    f = azure(tmp_path, AZURE_HEADER + ROW1)
    with pytest.raises(WorkloadError, match=r"unknown trace format 'azur'; known: azure, "):
        read_trace(f, "azur")
    with pytest.raises(WorkloadError, match=r"trace option 'jitter' is not known for format "
                                            r"azure; its options: none"):
        read_trace(f, options={"jitter": 3})
    with pytest.raises(WorkloadError, match=r"missing column 'arrived_at' for format vidur"):
        read_trace(f, "vidur")
    with pytest.raises(WorkloadError, match=r"missing column 'Timestamp' for format burstgpt "
                                            r"\(did you mean 'TIMESTAMP'\?\)"):
        read_trace(f, "burstgpt")
    m = tmp_path / "m.jsonl"
    m.write_text('{"timestamp": 0, "input_length": 5, "output_length": 2, "hash_ids": []}\n')
    with pytest.raises(WorkloadError, match=r"jitter \(format mooncake\) must be a number, "
                                            r"got 'lots'"):
        read_trace(m, options={"jitter": "lots"})
    with pytest.raises(WorkloadError, match=r"jitter must be a number of seconds >= 0"):
        read_trace(m, options={"jitter": -1})
    with pytest.raises(WorkloadError, match=r"trace file .*nope.csv does not exist"):
        read_trace(tmp_path / "nope.csv")


@pytest.mark.parametrize("command", [["run", "--no-timeline", "-q", "--trace"],
                                     ["trace", "stats"]])
def test_cli_prints_one_line_and_exits_2(tmp_path, capsys, command):
    f = azure(tmp_path, AZURE_HEADER + ROW1 + "2023-11-16 18:15:50.9951690,396,lots\n")
    assert main([*command, str(f)]) == 2
    err = capsys.readouterr().err
    assert err == (f"servesim: error: {f} line 3, column 'GeneratedTokens': expected a number, "
                   f"got 'lots'\n")


def test_cli_warns_about_a_sorted_trace(tmp_path, capsys):
    f = azure(tmp_path, AZURE_HEADER + ROW2 + ROW1 + ROW3)
    assert main(["trace", "stats", str(f), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["requests"] == 3 and "not sorted" in out["warnings"][0]
    assert main(["run", "--trace", str(f), "--no-timeline", "--json"]) == 0
    captured = capsys.readouterr()
    assert "servesim: warning: timestamps not sorted" in captured.err
    assert main(["run", "--trace", str(f), "--strict", "--no-timeline", "-q"]) == 2
