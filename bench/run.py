"""`make bench`: run every bench/bench_*.py, print one table, write JSON and a plot.

    python bench/run.py                 # quick preset (a few minutes on 2 CPU cores)
    python bench/run.py --full          # the sizes the issues list
    python bench/run.py --only verify_chain --device cpu
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pathlib
import re
import sys
import time

import torch

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import dspark_ops  # noqa: E402,F401  (loads the ops)

from harness import device_peaks, environment, measure  # noqa: E402

BASELINES = ["eager", "compile", "triton", "numpy"]


def discover(only: list[str] | None):
    for path in sorted(HERE.glob("bench_*.py")):
        family = path.stem[len("bench_"):]
        if only and family not in only:
            continue
        yield family, importlib.import_module(path.stem)


def run(preset: str, device: str, only: list[str] | None, deadline: float, save) -> dict:
    """Every case of every family; ``save(result)`` after each case, so a run stopped by a time
    limit still leaves its JSON; cases that would start after ``deadline`` (time.time()) are
    skipped and listed in the result."""
    bandwidth, flops_peak, peak_source = device_peaks(device)
    print(f"[bench] {device}: floor bandwidth {bandwidth / 1e9:.1f} GB/s ({peak_source})", file=sys.stderr)
    rows, skipped = [], []
    result = {"environment": environment(device), "preset": preset, "floor_bandwidth_Bps": bandwidth,
              "floor_source": peak_source, "rows": rows, "skipped_for_time": skipped}
    for family, module in discover(only):
        cases = module.cases(preset, device)
        for i, case in enumerate(cases):
            if time.time() > deadline:
                skipped.append(f"{case.op} {case.shape} {case.dtype}")
                continue
            print(f"[bench] {family} {i + 1}/{len(cases)}: {case.op} {case.shape} {case.dtype}", file=sys.stderr,
                  flush=True)
            timings = {}
            for name, fn in case.providers.items():
                try:
                    timings[name] = measure(fn, device)
                except Exception as e:  # a failing baseline must not hide the others
                    print(f"[bench]   {name} failed: {type(e).__name__}: {e}", file=sys.stderr)
            floor_s = case.bytes_moved / bandwidth
            if case.flops and flops_peak:
                floor_s = max(floor_s, case.flops / flops_peak)
            floor_us = floor_s * 1e6
            for name, t in timings.items():
                rows.append({
                    "family": family, "op": case.op, "shape": case.shape, "dtype": case.dtype, "device": device,
                    "provider": name, "median_us": t.median_us, "p20_us": t.p20_us, "p80_us": t.p80_us,
                    "bytes_moved": case.bytes_moved, "flops": case.flops,
                    "achieved_GBps": case.bytes_moved / (t.median_us * 1e-6) / 1e9,
                    "floor_us": floor_us, "fraction_of_floor": floor_us / t.median_us, "note": case.note,
                })
            save(result)
    return result


def table(result: dict) -> str:
    by_case: dict[tuple, dict] = {}
    for row in result["rows"]:
        by_case.setdefault((row["op"], row["shape"], row["dtype"]), {})[row["provider"]] = row
    head = f"{'op':<18} {'shape':<30} {'dtype':<6} {'ours µs':>10} {'best baseline':>22} {'ratio':>7} " \
           f"{'floor µs':>9} {'of floor':>8}"
    lines = [head, "-" * len(head)]
    for (op, shape, dtype), provs in by_case.items():
        ours = provs.get("ours")
        base = [(provs[b]["median_us"], b) for b in BASELINES if b in provs]
        others = [(r["median_us"], p) for p, r in provs.items() if p != "ours" and p not in BASELINES]
        best = min(base + others) if base + others else None
        ours_us = f"{ours['median_us']:.1f}" if ours else "-"
        base_s = f"{best[1]} {best[0]:.1f}" if best else "-"
        ratio = f"{best[0] / ours['median_us']:.2f}x" if ours and best else "-"
        floor = f"{ours['floor_us']:.1f}" if ours else "-"
        frac = f"{100 * ours['fraction_of_floor']:.0f}%" if ours else "-"
        lines.append(f"{op:<18} {shape:<30} {dtype:<6} {ours_us:>10} {base_s:>22} {ratio:>7} {floor:>9} {frac:>8}")
    lines.append("ratio = fastest baseline time / ours (higher is better); of floor = floor time / ours time.")
    return "\n".join(lines)


def plot(result: dict, path: pathlib.Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("[bench] matplotlib missing: no plot", file=sys.stderr)
        return False
    ours = [r for r in result["rows"] if r["provider"] == "ours"]
    labels, ratios, fractions = [], [], []
    for r in ours:
        base = [x["median_us"] for x in result["rows"] if x["provider"] != "ours" and
                (x["op"], x["shape"], x["dtype"]) == (r["op"], r["shape"], r["dtype"])]
        labels.append(f"{r['op']}\n{r['shape']} {r['dtype']}")
        ratios.append(min(base) / r["median_us"] if base else 0.0)
        fractions.append(r["fraction_of_floor"])
    if not labels:
        return False
    fig, axes = plt.subplots(2, 1, figsize=(max(8, 0.6 * len(labels)), 9), sharex=True)
    axes[0].bar(range(len(labels)), ratios, color="tab:blue")
    axes[0].axhline(1.0, color="k", lw=0.8)
    axes[0].set_ylabel("fastest baseline / ours")
    axes[0].set_yscale("log")
    axes[1].bar(range(len(labels)), fractions, color="tab:green")
    axes[1].axhline(1.0, color="k", lw=0.8)
    axes[1].set_ylabel("fraction of roofline floor")
    axes[1].set_xticks(range(len(labels)))
    axes[1].set_xticklabels(labels, rotation=90, fontsize=6)
    env = result["environment"]
    fig.suptitle(f"dspark_ops on {env['device_name']} ({result['preset']} preset, torch {env['torch']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="the issues' sizes (slow on CPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--only", nargs="*", help="families, e.g. verify_chain markov_draft")
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--max-seconds", type=float, default=float("inf"),
                        help="start no case after this many seconds (the JSON lists the skipped ones)")
    args = parser.parse_args()
    preset = "full" if args.full else "quick"
    start = time.time()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", environment(args.device)["device_name"]).strip("_")[:40]
    stem = f"{args.device}-{name}-{preset}"
    json_path = out / f"{stem}.json"
    result = run(preset, args.device, args.only, start + args.max_seconds,
                 lambda partial: json_path.write_text(json.dumps(partial, indent=1)))
    json_path.write_text(json.dumps(result, indent=1))
    if result["skipped_for_time"]:
        print(f"[bench] skipped for time: {len(result['skipped_for_time'])} cases", file=sys.stderr)
    plotted = plot(result, out / f"{stem}.png")
    print(f"[bench] {len(result['rows'])} measurements in {time.time() - start:.0f} s -> {json_path}"
          + (f" and {stem}.png" if plotted else ""), file=sys.stderr)
    print(table(result))


if __name__ == "__main__":
    os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
    main()
