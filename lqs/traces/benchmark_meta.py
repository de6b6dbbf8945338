"""Run-level keys of a benchmark result: the rate, the client's concurrency cap and burstiness, the server the
file states (SGLang ``server_info``, a wrapper's ``server_config``) and the run's own summary statistics. Numbers
may be JSON numbers or strings ("100", "inf", "None"), as vLLM's ``--append-result`` and wrappers write them."""

from __future__ import annotations

import math

from .._errors import LqsError

_SGLANG_KEYS = ("total_output_tokens_retokenized", "mean_e2e_latency_ms", "accept_length", "generated_texts_ids")


def _number(run: dict, key: str, label: str, *, allow_inf: bool = False, lo: float = 0.0):
    """A run-level number (None if absent); "inf"/Infinity allowed where ``allow_inf``; negative → LqsError."""
    if key not in run or run[key] is None:
        return None
    v = run[key]
    if isinstance(v, str):
        try:
            v = float(v.strip())
        except ValueError:
            raise LqsError(key, run[key], "must be a number", f"in {label}") from None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise LqsError(key, v, "must be a number", f"in {label}")
    v = float(v)
    if math.isnan(v) or v < lo or (math.isinf(v) and not allow_inf):
        raise LqsError(key, v, f"must be a {'' if allow_inf else 'finite '}number ≥ {lo:g}", f"in {label}")
    return v


# ----------------------------------------------------------------------------------------------- run metadata
_NONE_WORDS = ("", "none", "null", "nan")
#: SGLang server_info / a wrapper's server_config key → the lqs Server field it states
_SERVER_KEYS = {"max_total_num_tokens": "M", "gpu_kv_cache_tokens": "M", "num_gpu_blocks": "gpu_blocks",
                "chunked_prefill_size": "prefill_chunk", "max_num_batched_tokens": "token_budget",
                "max_prefill_tokens": "token_budget",
                "page_size": "block_size", "block_size": "block_size",
                "max_running_requests": "max_running", "max_num_seqs": "max_running",
                "enable_prefix_caching": "prefix_caching", "version": "version"}


def _rate(r: dict, label: str):
    """request_rate as a float: a number, a numeric string, "inf" or the bare token Infinity (inf); None if absent."""
    v = r.get("request_rate")
    if v is None or (isinstance(v, str) and v.strip().lower() in _NONE_WORDS):
        return None
    if isinstance(v, str) and v.strip().lower() in ("inf", "infinity", "+inf"):
        return math.inf
    return _number(r, "request_rate", label, allow_inf=True)


def _opt_int(r: dict, key: str, label: str, lo: int = 1):
    """An optional integer key (a number or a numeric string; None, "None" or absent: None)."""
    v = r.get(key)
    if v is None or (isinstance(v, str) and v.strip().lower() in _NONE_WORDS):
        return None
    x = _number(r, key, label, allow_inf=True, lo=lo)
    if math.isinf(x):
        return None
    if x != round(x):
        raise LqsError(key, v, f"must be an integer ≥ {lo}", f"in {label}")
    return int(x)


def _server_fields(r: dict, label: str) -> dict:
    """{lqs field: (value, source)} from SGLang's server_info and a wrapper's server_config."""
    out = {}
    for blob in ("server_info", "server_config"):
        d = r.get(blob)
        if d is None:
            continue
        if not isinstance(d, dict):
            raise LqsError(blob, type(d).__name__, "must be a JSON object of server settings", f"in {label}")
        for key, field in _SERVER_KEYS.items():
            if key not in d or d[key] is None or field in out:
                continue
            if field == "version":
                out[field] = (str(d[key]), f"{blob}.{key} in {label}")
            elif field == "prefix_caching":
                out[field] = (bool(d[key]), f"{blob}.{key} in {label}")
            else:
                out[field] = (_opt_int(d, key, f"{blob} in {label}"), f"{blob}.{key} in {label}")
        if "M" not in out:  # SGLang also states the pool in internal_states[0].memory_usage.token_capacity
            st = d.get("internal_states")
            if isinstance(st, list) and st and isinstance(st[0], dict):
                mu = st[0].get("memory_usage")
                if isinstance(mu, dict) and mu.get("token_capacity") is not None:
                    out["M"] = (_opt_int(mu, "token_capacity", f"{blob} in {label}"),
                                f"{blob}.internal_states[0].memory_usage.token_capacity in {label}")
    return {k: v for k, v in out.items() if v[0] is not None}


#: the run's own summary statistics: (vLLM key, SGLang key) → lqs name (seconds)
_SUMMARY = {"ttft_p50_s": ("median_ttft_ms",), "ttft_p99_s": ("p99_ttft_ms",), "ttft_mean_s": ("mean_ttft_ms",),
            "tpot_p50_s": ("median_tpot_ms",), "tpot_p99_s": ("p99_tpot_ms",), "itl_p50_s": ("median_itl_ms",),
            "itl_p99_s": ("p99_itl_ms",), "e2e_p50_s": ("median_e2el_ms", "median_e2e_latency_ms"),
            "e2e_p99_s": ("p99_e2el_ms", "p99_e2e_latency_ms"), "e2e_mean_s": ("mean_e2el_ms", "mean_e2e_latency_ms")}


def _summary(r: dict, label: str) -> dict:
    out = {}
    for name, keys in _SUMMARY.items():
        for k in keys:
            v = _number(r, k, label) if k in r else None
            if v is not None:
                out[name] = v / 1e3
                break
    return out


def _format(r: dict) -> str:
    return "sglang" if any(k in r for k in _SGLANG_KEYS) or str(r.get("backend", "")).startswith("sglang") \
        or "server_info" in r else "vllm"


def _meta(r: dict, where: str) -> dict:
    return dict(max_concurrency=_opt_int(r, "max_concurrency", where), burstiness=_burstiness(r, where),
                server=_server_fields(r, where), summary=_summary(r, where))


def _burstiness(r: dict, where: str):
    v = r.get("burstiness")
    if v is None or (isinstance(v, str) and v.strip().lower() in _NONE_WORDS):
        return None
    x = _number(r, "burstiness", where)
    if not x > 0 or math.isinf(x):
        raise LqsError("burstiness", v, "must be a finite number > 0 (the gamma shape; 1 is Poisson)", f"in {where}")
    return x
