"""The server of a measured run: each field from the caller, the server log, the result file, or the engine's
documented default for its version, in that order, with the source of each (lqs.traces.server_config)."""

from __future__ import annotations

import numpy as np

from .._batch import BatchTime, parse_batch_spec
from .._errors import LqsError, parse_number
from .._server import Server

_INT_FIELDS = ("M", "prefill_chunk", "token_budget", "max_running", "block_size")


def resolve_server(bench, server=None, *, M=None, server_log=None, prefill_chunk=None, token_budget=None,
                   max_running=None, block_size=None, policy=None, b=None, b_model=None) -> tuple[Server, dict]:
    """(Server, {field: source}) for a measured run. ``b_model``: a :class:`lqs.BatchTime` or its text form
    (``constant``, ``constant:B``, ``affine:A0,A1,A2,A3``, ``lognormal:CV``, ``empirical`` (the run's gaps));
    ``b``: b̄ in seconds (default: the median per-request TPOT of the run)."""
    if server is not None:
        if not isinstance(server, Server):
            raise LqsError("server", type(server).__name__, "must be an lqs.Server (or None: resolved from the run)")
        return server.require_scalar("replay"), {f: "server" for f in ("M", "prefill_chunk", "token_budget",
                                                                        "max_running", "block_size", "policy", "b")}
    given = {"M": M, "prefill_chunk": prefill_chunk, "token_budget": token_budget, "max_running": max_running,
             "block_size": block_size}
    fields, sources = {}, {}
    for k, v in given.items():
        if v is not None:
            fields[k] = parse_number(k, v)
            sources[k] = "given"
    if policy is not None:
        fields["policy"], sources["policy"] = policy, "given"
    stated = {}
    engine, version = bench.source_format, None
    if server_log is not None:
        from ..traces.server_config import read_server_log

        stated.update(read_server_log(server_log))
        engine = stated.get("engine", (engine,))[0]
    for k, v in (bench.server or {}).items():
        stated.setdefault(k, v)
    version = stated.get("version", (None,))[0]
    for k in _INT_FIELDS:
        if k not in fields and k in stated:
            fields[k], sources[k] = stated[k]
    if "M" not in fields:
        raise LqsError("M", None, f"is not stated by {bench.trace.source}: give M (tokens, --M) or a server log "
                                  "(--server-log) stating the KV-cache size")
    from ..traces.server_config import engine_defaults

    for k, (v, src) in engine_defaults(engine, version).items():
        if k not in fields:
            fields[k], sources[k] = v, src
    if "prefill_chunk" not in sources or sources["prefill_chunk"].endswith("default"):
        pass
    if fields.get("token_budget") is not None and fields["token_budget"] < fields["prefill_chunk"]:
        fields["prefill_chunk"] = fields["token_budget"]  # vLLM V1: a prefill chunk never exceeds the budget
        sources["prefill_chunk"] += " (capped at the token budget)"
    batch, b_src = _batch_model(bench, b, b_model)
    sources["b"] = b_src
    try:
        srv = Server(M=fields["M"], prefill_chunk=fields["prefill_chunk"], b=batch, policy=fields["policy"],
                     token_budget=fields.get("token_budget"), max_running=fields.get("max_running"),
                     block_size=fields.get("block_size", 1),
                     b_theory=None if batch.kind != "affine" else float(bench.b or 0) or None)
    except LqsError as e:
        raise LqsError(e.param, e.value, e.allowed, f"from {sources.get(e.param, 'the run')}") from None
    return srv, sources


def _batch_model(bench, b, b_model):
    if isinstance(b_model, BatchTime):
        return b_model, "given"
    b_bar = None if b is None else float(parse_number("b", b))
    src = "given" if b is not None else bench.b_source
    if b_bar is None:
        b_bar = bench.b
    spec = (b_model or "constant").strip()
    if spec.startswith("affine:") or (spec.startswith("constant:")):
        return parse_batch_spec(spec, 1.0, param="b_model"), "given (--b-model)"
    if b_bar is None:
        raise LqsError("b", None, f"give b (seconds) or --b-model: {bench.trace.source} states neither per-request "
                                  "latencies nor inter-token gaps")
    samples = None
    if spec == "empirical":
        if bench.b_samples is None:
            raise LqsError("b_model", spec, f"needs inter-token gaps (itls) in {bench.trace.source}")
        samples = np.quantile(bench.b_samples, (np.arange(8192) + 0.5) / 8192)
    return parse_batch_spec(spec, b_bar, samples, param="b_model"), (src or "given")
