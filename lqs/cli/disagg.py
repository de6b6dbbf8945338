"""``lqs disagg``: disaggregated prefill and decode pools, the closed form over the P:D splits of G GPUs beside G
colocated servers (docs/model.md, "Disaggregated prefill and decode")."""

from __future__ import annotations

import click

from .options import (build_server, echo_json, output_options, parse_float, parse_int, resolve_workload,
                      server_options, workload_options)


def _splits(text):
    from .._errors import LqsError

    out = []
    for part in str(text).split(","):
        try:
            p, d = (int(x) for x in part.strip().split(":"))
        except ValueError:
            raise LqsError("splits", text, "must read N_P:N_D[,N_P:N_D...], e.g. 1:3,2:2") from None
        if p < 1 or d < 1:
            raise LqsError("splits", part.strip(), "each pool needs at least one server (N_P, N_D ≥ 1)")
        out.append((p, d))
    return out


def transfer_options(scope: str = ""):
    """--transfer-latency, --transfer-tokens-per-s, --kv-bytes-per-token and --transfer-bandwidth (parameters
    tau0, rate, kv_bytes, bandwidth; :func:`parse_transfer` reads them). ``scope`` prefixes each help text."""
    from .renamed import _compose

    return _compose(
        click.option("--transfer-latency", "tau0", metavar="SECONDS", default="0", show_default=True,
                     help=scope + "Fixed part τ0 of the KV transfer time τ(s) = τ0 + s/r."),
        click.option("--transfer-tokens-per-s", "rate", metavar="TOKENS_PER_S", default=None,
                     help=scope + "Transfer rate r in KV tokens per second (default: latency only)."),
        click.option("--kv-bytes-per-token", "kv_bytes", metavar="BYTES", default=None,
                     help=scope + "KV bytes per token; with --transfer-bandwidth gives r."),
        click.option("--transfer-bandwidth", "bandwidth", metavar="BYTES_PER_S", default=None,
                     help=scope + "Link bandwidth in bytes per second; with --kv-bytes-per-token gives r."),
    )


def parse_transfer(tau0, rate, kv_bytes=None, bandwidth=None):
    """The lqs.Transfer of the --transfer-latency, --transfer-tokens-per-s (or --kv-bytes-per-token with
    --transfer-bandwidth) options."""
    from .._disagg import Transfer
    from .._errors import LqsError

    if rate is not None and (kv_bytes is not None or bandwidth is not None):
        raise LqsError("transfer_tokens_per_s", rate, "give either --transfer-tokens-per-s or --kv-bytes-per-token "
                       "with --transfer-bandwidth, not both")
    t0 = parse_float("transfer_latency", tau0, 0.0)
    if kv_bytes is not None or bandwidth is not None:
        if kv_bytes is None or bandwidth is None:
            raise LqsError("transfer_bandwidth", bandwidth, "--kv-bytes-per-token and --transfer-bandwidth go together")
        return Transfer.from_bandwidth(parse_float("kv_bytes_per_token", kv_bytes, 0.0, lo_open=True),
                                       parse_float("transfer_bandwidth", bandwidth, 0.0, lo_open=True), t0)
    return Transfer(t0, float("inf") if rate is None else parse_float("transfer_tokens_per_s", rate, 0.0,
                                                                      lo_open=True))


@click.command("disagg")
@workload_options
@server_options(simulation=False)
@click.option("--gpus", "gpus", metavar="G", default=None, help="GPUs to split into N_P + N_D (every split).")
@click.option("--splits", "splits", metavar="P:D[,P:D...]", default=None, help="Explicit N_P:N_D splits instead.")
@click.option("--prefill-M", "prefill_M", metavar="TOKENS", default=None, help="The prefill pool's M (default --M).")
@click.option("--decode-M", "decode_M", metavar="TOKENS", default=None, help="The decode pool's M (default --M).")
@click.option("--prefill-b", "prefill_b", metavar="SECONDS", default=None, help="The prefill pool's b̄ (default --b).")
@click.option("--decode-b", "decode_b", metavar="SECONDS", default=None, help="The decode pool's b̄ (default --b).")
@click.option("--prefill-budget", "prefill_budget", metavar="TOKENS", default=None,
              help="The prefill pool's token budget per step (default none).")
@click.option("--decode-budget", "decode_budget", metavar="TOKENS", default=None,
              help="The decode pool's token budget per step (default none).")
@transfer_options()
@click.option("--lam", "lam", metavar="RPS", default=None, help="Arrival rate λ: the closed-form verdict per split.")
@click.option("--simulate", "simulate_", is_flag=True,
              help="Also measure λ* per station (saturation runs of a prefill, a decode and a colocated server) and "
                   "give the long-run verdict at --lam.")
@click.option("--trials", "trials", metavar="N", default="16", show_default=True)
@click.option("--steps", "steps", metavar="N", default="20000", show_default=True)
@click.option("--warmup", "warmup", metavar="N", default="4000", show_default=True)
@click.option("--seed", "seed", metavar="N", default="0", show_default=True)
@click.option("--latency-trials", "latency_trials", metavar="N", default="2", show_default=True,
              help="Trials of the coupled network (both pools on one clock) for the latency at --lam "
                   "(with --simulate).")
@click.option("--horizon", "horizon", metavar="SECONDS", default=None,
              help="The coupled network's horizon in simulated seconds (default 12,000 typical steps).")
@click.option("--no-latency", "no_latency", is_flag=True, help="Skip the coupled network's latency at --lam.")
@output_options(out_help="Write splits.csv, splits.json and splits.png here.")
def disagg_cmd(gpus, splits, prefill_M, decode_M, prefill_b, decode_b, prefill_budget, decode_budget, tau0, rate,
               kv_bytes, bandwidth, lam, simulate_, trials, steps, warmup, seed, latency_trials, horizon, no_latency,
               as_json, out, **opts):
    """The closed form of a disaggregated deployment over its P:D splits, with G colocated servers beside it.

    \b
    Examples:
      lqs disagg --workload pd-1:1 --M 131000 --prefill-chunk 512 --b 0.0372 --gpus 8
      lqs disagg --trace azure-conv --M 131000 --prefill-chunk 512 --b 0.0372 --decode-b 0.03 \\
                 --splits 1:7,2:6 --transfer-latency 0.005 --transfer-tokens-per-s 2e6 --lam 90 --json
    """
    import os

    from .._disagg import Disaggregated
    from .._splits import split_table
    from .._errors import LqsError

    base, _ = build_server(opts)
    base = base.replace(servers=1)
    if (gpus is None) == (splits is None):
        raise LqsError("gpus", gpus, "give exactly one of --gpus G and --splits P:D,...")
    pairs = _splits(splits) if splits is not None else None
    G = parse_int("gpus", gpus, 2) if gpus is not None else None

    def pool(M, b, budget):
        kw = {}
        if M is not None:
            kw["M"] = parse_int("M", M, 1)
        if b is not None:
            kw["b"] = parse_float("b", b, 0.0, lo_open=True)
        if budget is not None:
            kw["token_budget"] = parse_int("token_budget", budget, 1)
        return base.replace(**kw)

    transfer = parse_transfer(tau0, rate, kv_bytes, bandwidth)
    dep = Disaggregated(pool(prefill_M, prefill_b, prefill_budget), pool(decode_M, decode_b, decode_budget),
                        transfer=transfer)
    wl = resolve_workload(**{**opts, "M": max(dep.prefill.M, dep.decode.M)})
    lam_v = None if lam is None else parse_float("lam", lam, 0.0)
    import lqs

    mc = None
    if simulate_:

        from . import cli_path

        mc = lqs.MonteCarlo(trials=parse_int("trials", trials, 2), steps=parse_int("steps", steps, 2),
                            warmup=parse_int("warmup", warmup, 0), seed=parse_int("seed", seed), path=cli_path())
    latency = bool(simulate_ and lam_v is not None and not no_latency)
    lat_mc = None
    if latency:
        lat_mc = lqs.MonteCarlo(trials=parse_int("latency_trials", latency_trials, 1), seed=parse_int("seed", seed))
    hz = None if horizon is None else parse_float("horizon", horizon, 0.0, lo_open=True)
    df = split_table(wl.workload, dep, G, pairs=pairs, colocated=base, lam=lam_v, simulate=simulate_, mc=mc,
                     seed=0 if seed is None else parse_int("seed", seed), latency=latency, latency_mc=lat_mc,
                     horizon_s=hz, progress=False)
    pools = {k: v for k, v in dep.describe().items() if k not in ("n_prefill", "n_decode")}  # per row
    doc = dict(workload=wl.label, deployment=pools, colocated=base.describe(), lam_rps=lam_v,
               rows=df.to_dict(orient="records"))
    if "network_config" in df.attrs:
        doc["coupled_network"] = {k: v for k, v in df.attrs["network_config"].items() if k != "deployments"}
    if out is not None:
        from .._splits import plot_splits
        from .._jsonio import dump

        os.makedirs(out, exist_ok=True)
        df.to_csv(os.path.join(out, "splits.csv"), index=False)
        with open(os.path.join(out, "splits.json"), "w") as fh:
            dump(doc, fh, indent=2)
        plot_splits(df, os.path.join(out, "splits.png"), wl.label)
    if as_json:
        echo_json(doc)
        return
    cols = [c for c in ("layout", "mu_prefill_rps", "mu_decode_rps", "mu_pd_rps", "mu_pd_stable_rps", "binding",
                        "lam_star_rps", "binding_sim", "verdict_closed_form", "verdict", "net_ttft_p99_s",
                        "net_tpot_p50_s", "net_e2e_p99_s", "net_reliable", "best_split") if c in df]
    click.echo(df[cols].to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    best = df[df.best_split].iloc[0]
    colo = df[df.binding == "colocated"].iloc[0]
    click.echo(f"best split {best.layout}: μ_PD {best.mu_pd_rps:.4g} req/s ({best.binding} binds) against "
               f"{colo.mu_pd_rps:.4g} req/s for {colo.layout}"
               + (f"; simulated λ* {best.lam_star_rps:.4g} against {colo.lam_star_rps:.4g}" if simulate_ else ""))
