"""``vllm bench serve --dataset-name custom`` input: JSONL with ``prompt`` text and an optional
``output_tokens`` per line (without it, ``output_len``, vLLM's ``--custom-output-len``).

The file carries text, not token counts, and servesim has no tokenizer: the prompt's tokens are
estimated as characters / ``chars_per_token`` (4 by default, the usual figure for English with
Llama/GPT tokenizers). The estimate is recorded in the summary and warned about; for exact
counts, convert the file to token counts and use the generic format. The text also gives each
prompt its prefix identity: chained keys of its 16-token blocks (``text_blocks``, see
traces/prompt_text.py), so prompts that start with the same text share KV blocks. vLLM shuffles the file
(with a fixed seed) before sending; servesim keeps the file order. There are no arrival times:
pair it with a generated arrival process. The timed-trace JSONL is ``vllm-trace`` (mooncake.py).
"""

from __future__ import annotations

import numpy as np

from traces.errors import WorkloadError
from traces.loaders.base import Option, Parsed, TraceFormat
from traces.loaders.table import RawTable, show, tokens
from traces.prompt_text import text_block_keys
from traces.workload import TEXT_BLOCKS


def parse(table: RawTable, options: dict, seed: int) -> Parsed:
    prompts = table.frame["prompt"]
    not_text = ~prompts.map(lambda p: isinstance(p, str)).to_numpy()
    if not_text.any():
        i = int(np.argmax(not_text))
        raise WorkloadError(f"{table.where(i, 'prompt')}: expected text, got "
                            f"{show(prompts.iloc[i])}")
    cpt = options["chars_per_token"]
    if not cpt > 0:
        raise WorkloadError(f"trace option chars_per_token must be > 0, got {cpt!r}")
    chars = prompts.str.len().to_numpy(dtype=np.float64)
    prompt = np.maximum(1, np.round(chars / cpt)).astype(np.int64)
    if "output_tokens" in table.frame.columns:
        output = tokens(table, "output_tokens")
    else:
        if options["output_len"] < 1:
            raise WorkloadError(f"trace option output_len must be >= 1, got "
                                f"{options['output_len']}")
        output = np.full(len(table), options["output_len"], dtype=np.int64)
    parsed = Parsed(None, prompt, output)
    keys = np.empty(len(prompt), dtype=object)
    for i, (text, n) in enumerate(zip(prompts, prompt)):
        keys[i] = text_block_keys(text, cpt, int(n))
    parsed.extra[TEXT_BLOCKS] = keys
    parsed.meta["prompt_tokens"] = f"estimated as characters / {cpt:g} (no tokenizer)"
    parsed.meta["prefix_identity"] = "prompt text: chained hashes of 16-token blocks of " \
                                     f"{cpt:g}-character tokens (traces/prompt_text.py)"
    parsed.meta["warnings"] = [f"prompt lengths of {table.path.name} are estimated as "
                               f"characters / {cpt:g}; convert to token counts for exact ones"]
    return parsed


FORMAT = TraceFormat(
    name="vllm-custom",
    description="vllm bench custom JSONL: prompt (text), optional output_tokens (no times)",
    columns=("prompt",),
    optional_columns=("output_tokens",),
    parse=parse,
    has_arrivals=False,
    options=(
        Option("output_len", int, 256, "output tokens of lines without output_tokens "
                                       "(vLLM's --custom-output-len)"),
        Option("chars_per_token", float, 4.0, "characters per prompt token for the estimate"),
    ),
)
