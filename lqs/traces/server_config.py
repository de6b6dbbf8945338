"""The whole server from what a benchmark file or a server log states, and the engine's documented defaults for
what they leave out: KV capacity M, token budget and prefill chunk, running-request cap, KV block size, policy.

Every field comes with its source (the file and key, the log line, or "vLLM 0.10+ default"), so that a report can
say where each number came from.

vLLM server logs from 0.6 to 0.18 are read: line prefixes such as ``(EngineCore_0 pid=…)``,
``(EngineCore_DP0 pid=…)``, ``(EngineCore pid=…)`` or ``(APIServer pid=…)``; numbers with thousands separators;
lines hard-wrapped at a fixed width (joined back before matching); the ``non-default args: {...}`` dict; the
engine-configuration line and ``Chunked prefill is enabled with max_num_batched_tokens=N``. SGLang logs state
``ServerArgs(...)`` and ``max_total_num_tokens=N``.
"""

from __future__ import annotations

import ast
import os
import re

from .._errors import LqsError

FIELDS = ("M", "prefill_chunk", "token_budget", "max_running", "block_size", "policy")

_RECORD = re.compile(r"^\s*(\((?:[A-Za-z][\w]*)(?:\s+pid=\d+)?\)\s*)?(INFO|WARNING|WARN|DEBUG|ERROR|CRITICAL)\b"
                     r"|^\s*\[\d{4}-\d\d-\d\d|^\s*\d{4}-\d\d-\d\d[ T]")
_PREFIX = re.compile(r"^\s*\((?:[A-Za-z][\w]*)(?:\s+pid=\d+)?\)\s*")
_VERSION = re.compile(r"(?:engine \(v|vLLM API server version |vllm version[ =:]+v?)(\d+\.\d+(?:\.\d+)?)", re.I)
_NUM = r"([\d][\d,_]*)"
_KEYS = {"max_num_seqs": "max_running", "max_num_batched_tokens": "token_budget", "block_size": "block_size",
         "chunked_prefill_size": "prefill_chunk", "max_running_requests": "max_running", "page_size": "block_size",
         "long_prefill_token_threshold": "long_prefill"}
WRAP_MIN = 100  # a line this long followed by a line that starts no record was hard-wrapped


def unwrap(text: str) -> list[str]:
    """The log's records: hard-wrapped continuation lines joined back, process prefixes stripped."""
    out: list[str] = []
    prev_len = 0
    for line in text.splitlines():
        if out and not _RECORD.match(line) and prev_len >= WRAP_MIN:
            out[-1] += line.strip() if out[-1].endswith((" ", ",", "=", ":", "{", "(", "[")) else line.lstrip()
        else:
            out.append(_PREFIX.sub("", line))
        prev_len = len(line)
    return out


def _int(txt: str) -> int:
    return int(txt.replace(",", "").replace("_", ""))


def _dict_after(rec: str, marker: str):
    """The Python dict literal after ``marker`` in a record (None if absent or unreadable)."""
    i = rec.find(marker)
    if i < 0:
        return None
    j = rec.find("{", i)
    if j < 0:
        return None
    depth = 0
    for k in range(j, len(rec)):
        depth += {"{": 1, "}": -1}.get(rec[k], 0)
        if depth == 0:
            try:
                d = ast.literal_eval(rec[j:k + 1])
            except (ValueError, SyntaxError):
                return None
            return d if isinstance(d, dict) else None
    return None


def read_server_log(path) -> dict:
    """{field: (value, source)} of what a vLLM or SGLang server log states (M, token_budget, max_running,
    block_size, prefill_chunk, prefix_caching, version, engine)."""
    from .read import _open_text
    from .server_log import kv_tokens_from_text

    label = os.fspath(path) if isinstance(path, os.PathLike) else path
    if not isinstance(label, str) or not os.path.isfile(label):
        raise LqsError("server_log", path, "must be an existing server log file", "no such file")
    try:
        with _open_text(label) as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError, EOFError) as e:
        raise LqsError("server_log", label, "must be a readable text log", type(e).__name__) from None
    recs = unwrap(text)
    joined = "\n".join(recs)
    out: dict = {}
    engine = "sglang" if ("ServerArgs(" in joined or "max_total_num_tokens" in joined) else "vllm"
    out["engine"] = (engine, f"{label} (log format)")
    m = _VERSION.search(joined)
    if m:
        out["version"] = (m.group(1), f"{label}: '{m.group(0)}'")
    out["M"] = (kv_tokens_from_text(joined, label), f"KV-cache size in {label}")
    for n, rec in enumerate(recs, start=1):
        d = _dict_after(rec, "non-default args")
        if d:
            for key, field in _KEYS.items():
                if key in d and field not in out and isinstance(d[key], int) and not isinstance(d[key], bool):
                    out[field] = (int(d[key]), f"non-default args in {label} (record {n})")
            if "enable_prefix_caching" in d:
                out.setdefault("prefix_caching", (bool(d["enable_prefix_caching"]), f"non-default args in {label}"))
    for key, field in _KEYS.items():
        if field in out:
            continue
        m = re.search(rf"""['"]?\b{key}['"]?\s*[=:]\s*{_NUM}""", joined)
        if m:
            line = joined[max(0, joined.rfind("\n", 0, m.start()) + 1):m.end()]
            out[field] = (_int(m.group(1)), f"{label}: '{line[-60:].strip()}'")
    m = re.search(r"enable_prefix_caching['\"]?\s*[=:]\s*(True|False)", joined)
    if m and "prefix_caching" not in out:
        out["prefix_caching"] = (m.group(1) == "True", f"{label}: '{m.group(0)}'")
    return out


def _version_tuple(v):
    try:
        return tuple(int(x) for x in str(v).split(".")[:2])
    except ValueError:
        return None


def engine_defaults(engine: str, version: str | None) -> dict:
    """{field: (value, source)}: what the engine uses for an unset field. vLLM (OpenAI server, a GPU of ≥ 70 GiB
    that is not an A100, as the benchmark servers are): 0.10+ budget 8192 and 1024 running requests; 0.8–0.9
    (V1) 2048 and 256; 0.6–0.7 (V0, chunked prefill off for short contexts) no budget and 256; block 16.
    SGLang: page 1, chunk 8192 (≥ 80 GB GPUs). Both preempt by recompute (vLLM V1 and SGLang); the prefill chunk
    of vLLM V1 is the token budget (a long prompt takes what the budget leaves)."""
    vt = _version_tuple(version) if version else None
    if engine == "sglang":
        src = f"SGLang {version or '(version not stated)'} default"
        return {"block_size": (1, src), "prefill_chunk": (8192, src + " (GPUs of ≥ 80 GB)"),
                "policy": ("recompute", src + ": retracted requests are recomputed")}
    if vt is None or vt >= (0, 10):
        src = f"vLLM {version or '(version not stated: 0.10+ assumed)'} default"
        budget, seqs = 8192, 1024
    elif vt >= (0, 8):
        src, budget, seqs = f"vLLM {version} (V1) default", 2048, 256
    else:
        src, budget, seqs = f"vLLM {version} (V0) default", None, 256
    out = {"token_budget": (budget, src), "max_running": (seqs, src), "block_size": (16, src),
           "policy": ("recompute", src + ": preemption by recompute")}
    out["prefill_chunk"] = (budget if budget is not None else 8192,
                            src + (": the chunk is the token budget" if budget else ": whole prompts (8192 assumed)"))
    return out
