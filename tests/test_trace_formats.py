"""Each trace format on small hand-written files: columns, options, detection, containers."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pandas as pd
import pytest

from traces import Poisson, WorkloadError
from traces.loaders import detect_format, load_lengths, load_trace, read_trace
from traces.workload import stream_rng


def write(path, text: str):
    path.write_text(text)
    return path


def jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


BURST = """Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type
5,ChatGPT,472,18,490,Conversation log
45,ChatGPT,1087,0,1087,Conversation log
118,GPT-4,417,276,693,API log
120,ChatGPT,350,52,402,API log
131,GPT-4,1200,0,1200,Conversation log
"""


def test_azure_timestamps_keep_100ns_precision(tmp_path):
    f = write(tmp_path / "a.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n"
              "2023-11-16 18:15:46.6805900,374,44\n"
              "2023-11-16 18:15:50.9951690,396,109\n"
              "2023-11-16 18:16:46.6805901,10,5\n")
    w = read_trace(f)
    assert w.meta["format"] == "azure"
    assert w.meta["start_time"].startswith("2023-11-16T18:15:46.680590")
    np.testing.assert_array_equal(w.frame["arrival_s"], [0.0, 4.314579, 60.0000001])
    assert w.frame["prompt_tokens"].tolist() == [374, 396, 10]


def test_azure_2024_timestamps_without_fraction_or_with_zone(tmp_path):
    # The 2024 week-long traces mix whole seconds and fractions.
    f = write(tmp_path / "a.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n"
              "2024-05-10 00:00:00,1,1\n2024-05-10 00:00:00.5+00:00,2,2\n"
              "2024-05-10 00:00:02.2500000,3,3\n")
    np.testing.assert_allclose(read_trace(f).frame["arrival_s"], [0, 0.5, 2.25])


def test_burstgpt_drops_failed_requests_and_labels_by_model(tmp_path):
    w = read_trace(write(tmp_path / "b.csv", BURST))
    assert w.meta["format"] == "burstgpt"
    assert w.meta["rows"] == 5 and len(w) == 3
    assert w.meta["dropped"] == {"failed": 2}
    assert w.frame["label"].tolist() == ["ChatGPT", "GPT-4", "ChatGPT"]
    assert w.frame["log_type"].tolist() == ["Conversation log", "API log", "API log"]
    np.testing.assert_array_equal(w.frame["arrival_s"], [0, 113, 115])
    assert w.meta["start_offset_s"] == 5
    assert w.frame["trace_row"].tolist() == [0, 2, 3]


def test_burstgpt_model_and_log_type_filters_and_failed_kept(tmp_path):
    f = write(tmp_path / "b.csv", BURST)
    gpt4 = read_trace(f, options={"model": "GPT-4", "failed": "keep"})
    assert gpt4.frame["prompt_tokens"].tolist() == [417, 1200]
    assert gpt4.frame["output_tokens"].tolist() == [276, 1]       # the failure: prefill only
    assert gpt4.meta["dropped"] == {"model": 3}
    assert gpt4.meta["failed_as_prefill_only"] == 1
    conv = read_trace(f, options={"log_type": "Conversation log", "model": "ChatGPT,GPT-4"})
    assert conv.frame["prompt_tokens"].tolist() == [472]
    with pytest.raises(WorkloadError, match="no request has Model 'GPT-5'; present: ChatGPT, GPT-4"):
        read_trace(f, options={"model": "GPT-5"})
    with pytest.raises(WorkloadError, match="failed must be drop or keep"):
        read_trace(f, options={"failed": "maybe"})
    # Whole-second timestamps: jitter=1 spreads each second's requests over that second.
    t = read_trace(f, options={"jitter": 1}, seed=1).frame["arrival_s"].to_numpy()
    assert (np.floor(t) == [0, 113, 115]).all() and (t % 1 > 0).all()


def test_mooncake_jitter_spreads_inside_bucket_seeded(tmp_path):
    recs = [{"timestamp": ts, "input_length": 600, "output_length": 5, "hash_ids": [i, i + 1]}
            for i, ts in enumerate([0, 0, 0, 3000, 3000, 6000])]
    f = jsonl(tmp_path / "m.jsonl", recs)
    exact = read_trace(f)
    np.testing.assert_array_equal(exact.frame["arrival_s"], [0, 0, 0, 3, 3, 6])
    a = read_trace(f, options={"jitter": 3}, seed=7)
    b = read_trace(f, options={"jitter": "3"}, seed=7)
    c = read_trace(f, options={"jitter": 3}, seed=8)
    assert a.frame.drop(columns="hash_ids").equals(b.frame.drop(columns="hash_ids"))
    assert not np.array_equal(a.frame["arrival_s"], c.frame["arrival_s"])
    t = a.frame["arrival_s"].to_numpy()
    assert (np.diff(t) >= 0).all()
    # Each request lies in [its timestamp, timestamp + 3 s): exactly the seeded draws, sorted.
    offsets = stream_rng(7, "jitter").uniform(0, 3, size=6)
    np.testing.assert_allclose(t, np.sort(np.array([0, 0, 0, 3, 3, 6]) + offsets))
    assert a.meta["transforms"] == [{"op": "jitter", "width_s": 3.0, "seed": 7}]
    assert a.meta["options"] == {"jitter": 3.0}
    assert a.meta["warnings"] == []             # jitter's reordering is not the file's fault
    # Hash lists travel with their request through the sort.
    rows = a.frame["trace_row"].to_numpy()
    assert [list(h) for h in a.frame["hash_ids"]] == [[r, r + 1] for r in rows]


def test_vllm_timed_trace_detected_without_hash_ids(tmp_path):
    f = jsonl(tmp_path / "t.jsonl", [{"timestamp": 500, "input_length": 10, "output_length": 3},
                                     {"timestamp": 1500, "input_length": 20, "output_length": 4}])
    w = read_trace(f)
    assert w.meta["format"] == "vllm-trace"
    np.testing.assert_array_equal(w.frame["arrival_s"], [0.0, 1.0])
    assert w.meta["start_offset_s"] == 0.5


def test_vllm_custom_estimates_prompt_tokens_and_needs_arrivals(tmp_path):
    f = jsonl(tmp_path / "c.jsonl", [{"prompt": "x" * 400, "output_tokens": 10},
                                     {"prompt": "y" * 41, "output_tokens": 7},
                                     {"prompt": "", "output_tokens": 3}])
    w = read_trace(f)
    assert w.meta["format"] == "vllm-custom" and w.meta["arrival"] == "none"
    assert w.frame["prompt_tokens"].tolist() == [100, 10, 1]
    assert w.frame["output_tokens"].tolist() == [10, 7, 3]
    assert any("estimated" in m for m in w.meta["warnings"])
    with pytest.raises(WorkloadError, match="has no arrival times .*give an arrival process"):
        load_trace(f)
    replay = load_trace(f, arrival=Poisson(2.0), seed=3)
    expected = Poisson(2.0).sample(stream_rng(3, "arrivals"), n=3)
    np.testing.assert_array_equal(replay.frame["arrival_s"], expected)
    assert replay.frame["prompt_tokens"].tolist() == [100, 10, 1]      # file order kept
    no_out = jsonl(tmp_path / "d.jsonl", [{"prompt": "abcdefgh"}])
    w2 = read_trace(no_out, options={"output_len": 64, "chars_per_token": 2})
    assert (w2.frame["prompt_tokens"].iloc[0], w2.frame["output_tokens"].iloc[0]) == (4, 64)


def test_generic_mapping_csv_jsonl_parquet(tmp_path):
    frame = pd.DataFrame({"t_ms": [0, 250, 1000], "inp": [5, 6, 7], "out": [1, 2, 3],
                          "cls": ["a", "b", "a"]})
    opts = {"arrival": "t_ms", "prompt": "inp", "output": "out", "label": "cls",
            "time_unit": "ms"}
    frame.to_csv(tmp_path / "g.csv", index=False)
    frame.to_json(tmp_path / "g.jsonl", orient="records", lines=True)
    frame.to_parquet(tmp_path / "g.parquet")
    for name in ("g.csv", "g.jsonl", "g.parquet"):
        w = read_trace(tmp_path / name, options=opts)      # column options select generic
        assert w.meta["format"] == "generic"
        np.testing.assert_array_equal(w.frame["arrival_s"], [0, 0.25, 1.0])
        assert w.frame["label"].tolist() == ["a", "b", "a"]
    lengths_only = read_trace(tmp_path / "g.csv", "generic", {"prompt": "inp", "output": "out"})
    assert lengths_only.meta["arrival"] == "none"
    with pytest.raises(WorkloadError, match="format generic needs the column mapping"):
        read_trace(tmp_path / "g.csv", "generic")
    with pytest.raises(WorkloadError, match="time_unit must be one of s, ms, us, ns, datetime"):
        read_trace(tmp_path / "g.csv", options={**opts, "time_unit": "hours"})


def test_load_lengths_gives_empirical_pairs(tmp_path):
    f = write(tmp_path / "l.csv", "num_prefill_tokens,num_decode_tokens,num_total_tokens,pd_ratio\n"
              "10,20,30,0.5\n40,5,45,8\n")
    lengths = load_lengths(f)
    assert lengths.prompts.tolist() == [10, 40] and lengths.outputs.tolist() == [20, 5]
    p, o, _ = lengths.sample(np.random.default_rng(0), 50)
    assert set(zip(p.tolist(), o.tolist())) <= {(10, 20), (40, 5)}


def test_byte_order_mark_and_spaces_in_header(tmp_path):
    f = tmp_path / "bom.csv"
    f.write_bytes("\ufeffTIMESTAMP, ContextTokens ,GeneratedTokens\n"
                  "2023-11-16 18:15:46.6805900, 374, 44\n".encode("utf-8"))
    w = read_trace(f)
    assert w.meta["format"] == "azure" and w.frame["prompt_tokens"].tolist() == [374]


def test_parquet_missing_column_names_the_file(tmp_path):
    f = tmp_path / "p.parquet"
    pd.DataFrame({"arrived_at": [0.0], "num_prefill_tokens": [3]}).to_parquet(f)
    with pytest.raises(WorkloadError) as e:
        read_trace(f, "vidur")
    assert str(e.value) == (f"{f}: missing column 'num_decode_tokens' for format vidur; "
                            f"found columns: 'arrived_at', 'num_prefill_tokens'")
    g = tmp_path / "q.parquet"
    pd.DataFrame({"arrived_at": [0.0, 1.0], "num_prefill_tokens": [3, -1],
                  "num_decode_tokens": [1, 1]}).to_parquet(g)
    with pytest.raises(WorkloadError, match=r"q.parquet row 2, column 'num_prefill_tokens': "
                                            r"negative value -1"):
        read_trace(g)


def test_detection_prefers_the_most_specific_format_and_format_overrides(tmp_path):
    f = write(tmp_path / "v.csv", "arrived_at,num_prefill_tokens,num_decode_tokens\n0,1,2\n1,3,4\n")
    assert detect_format(f).name == "vidur"
    as_lengths = read_trace(f, "vidur-lengths")
    assert as_lengths.meta["arrival"] == "none" and len(as_lengths) == 2
    gz = tmp_path / "v.csv.data"
    with gzip.open(gz, "wt") as out:              # gzip recognised by content, not by name
        out.write(f.read_text())
    assert read_trace(gz).frame["prompt_tokens"].tolist() == [1, 3]
