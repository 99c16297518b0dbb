#!/usr/bin/env python
"""kpc against PyTorch eager and JAX jit, side by side, in one sitting.

    cargo build --release
    VENV/bin/python bench/run.py --reps 5                 # everything
    VENV/bin/python bench/run.py --reps 3 --only W1 W3    # a subset
    VENV/bin/python bench/run.py --summarize              # the table again, from raw.jsonl

VENV needs torch, jax, numpy (see bench/README.md). Each repetition runs every workload
with kpc, then PyTorch eager, then JAX jit (W1, W2 only), then the GEMM measurements, so
that the three share the machine's conditions; the table reports medians (min–max) and
ratios of medians. Every run is a separate process started with BENCH_T0 = time.time()
in its environment; kpc's time to first step is its `first_step` record's wall clock
minus BENCH_T0, the same definition the PyTorch and JAX scripts use.

Throughput is training samples per second over whole epochs after one warm-up epoch,
data in memory, one thread (`--threads 1` for kpc; OMP/MKL/XLA pinned to one thread for
the others). Peak RSS is each process's own: kpc's `end` record (Linux VmHWM), the
references' getrusage. (wait4's maximum also counts the forked Python child before it
execs, about 28–40 MiB here: it is kept in raw.jsonl as `wait4_rss_mb`.)

Raw records go to bench/results/raw.jsonl (one per run), the table to
bench/results/summary.md; with --write-docs it also replaces the marked section of
docs/benchmarks.md.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import common  # noqa: E402

PY = sys.executable
RESULTS = HERE / "results"
KPC = ROOT / "target" / "release" / "kpc"

# Epochs per kpc run: the first is the warm-up, the rest are timed (at least ~1 s).
KPC_EPOCHS = {"W1": 600, "W2": 4, "W3": 4, "W4": 3}
FILES = {"W1": "w1_digits.train", "W2": "w2_wide.train", "W3": "w3_words.train", "W4": "w4_docnames.train"}
JAX_WORKLOADS = {"W1", "W2"}


def spawn(cmd, cwd=None):
    """Runs cmd with BENCH_T0 set; returns (rc, stdout, stderr, peak RSS MiB, t0)."""
    env = dict(os.environ)
    t0 = time.time()
    env["BENCH_T0"] = repr(t0)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return p.returncode, out.read().decode(), err.read().decode(), usage.ru_maxrss / 1024.0, t0


def ensure_w2_data():
    if not (HERE / "w2_x.npy").exists():
        subprocess.run([PY, str(HERE / "gen_w2.py"), str(HERE)], check=True, stdout=subprocess.DEVNULL)


def run_kpc(w):
    with tempfile.TemporaryDirectory() as d:
        metrics = Path(d) / "m.jsonl"
        cmd = [str(KPC), "run", FILES[w], "--threads", "1", "--quiet", "--epochs", str(KPC_EPOCHS[w]),
               "--metrics", str(metrics)]
        s0 = common.cpu_snapshot()
        rc, _, err, rss, t0 = spawn(cmd, cwd=HERE)
        load = common.background_load(s0, common.cpu_snapshot())
        if rc != 0:
            return {"rc": rc, "stderr": err[-2000:]}
        recs = [json.loads(line) for line in metrics.read_text().splitlines()]
    epochs = [r for r in recs if r["kind"] == "epoch"][1:]
    samples = sum(r["samples_per_s"] * r["train_seconds"] for r in epochs)
    seconds = sum(r["train_seconds"] for r in epochs)
    first = next(r for r in recs if r["kind"] == "first_step")
    compile_ms = next(r for r in recs if r["kind"] == "compile")["ms"]
    # kpc's own VmHWM: wait4's figure also counts the forked Python child before its exec.
    own_rss = next((r["peak_rss_mib"] for r in recs if r["kind"] == "end"), rss)
    return {"rc": 0, "samples_per_s": samples / seconds, "ttfs_s": first["unix_s"] - t0,
            "ttfs_in_process_s": first["ms"] / 1e3, "compile_s": compile_ms / 1e3, "peak_rss_mb": own_rss,
            "wait4_rss_mb": rss,
            "timed_epochs": len(epochs), "timed_s": seconds, "whole_load": load}


def run_ref(script, w, mode):
    cmd = [PY, str(HERE / script), "--workload", w, "--threads", "1", "--mode", mode]
    rc, out, err, rss, _ = spawn(cmd)
    res = None
    for line in out.splitlines():
        if line.startswith("{"):
            res = json.loads(line)
    if rc != 0 or res is None:
        return {"rc": rc or 1, "stderr": err[-2000:]}
    res["rc"] = 0
    res["wait4_rss_mb"] = rss
    return res


def run_kpc_gemm():
    p = subprocess.run(["cargo", "bench", "--quiet", "--bench", "gemm"], cwd=ROOT, capture_output=True, text=True)
    out = {"rc": p.returncode}
    for line in p.stdout.splitlines():
        if line.startswith("{"):
            r = json.loads(line)
            out[r["shape"]] = r["gflops"]
    return out


def record(rec):
    RESULTS.mkdir(exist_ok=True)
    with open(RESULTS / "raw.jsonl", "a") as f:
        f.write(json.dumps(rec) + "\n")
    res = rec["result"]
    brief = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in res.items()
             if k in ("samples_per_s", "ttfs_s", "compile_s", "peak_rss_mb", "rc") or k.endswith("gflops") or "x" in k[:5]}
    print(f"[rep {rec['rep']}] {rec['config']:14s} {json.dumps(brief)}", file=sys.stderr, flush=True)


def run(args):
    if not KPC.exists():
        sys.exit(f"{KPC} is missing: run `cargo build --release` first")
    if "W2" in args.only:
        ensure_w2_data()
    sitting = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    for rep in range(args.reps):
        for w in args.only:
            configs = [("kpc", lambda: run_kpc(w)), ("torch eager", lambda: run_ref("torch_bench.py", w, "eager"))]
            if w in JAX_WORKLOADS:
                configs.append(("jax jit", lambda: run_ref("jax_bench.py", w, "jit")))
            for impl, fn in configs:
                record({"sitting": sitting, "rep": rep, "config": f"{w}:{impl}", "result": fn()})
        if not args.no_gemm:
            record({"sitting": sitting, "rep": rep, "config": "GEMM:kpc", "result": run_kpc_gemm()})
            record({"sitting": sitting, "rep": rep, "config": "GEMM:torch", "result": run_ref("torch_bench.py", "GEMM", "eager")})
    return sitting


def med(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def span(vals, fmt):
    vals = [v for v in vals if v is not None]
    if not vals:
        return "—"
    return f"{fmt(statistics.median(vals))} ({fmt(min(vals))}–{fmt(max(vals))})"


def summarize(sitting):
    recs = [json.loads(line) for line in open(RESULTS / "raw.jsonl")]
    if sitting is None:
        sitting = recs[-1]["sitting"]
    recs = [r for r in recs if r["sitting"] == sitting and r["result"].get("rc") == 0]
    by = {}
    for r in recs:
        by.setdefault(r["config"], []).append(r["result"])
    host = next((r["result"]["host"] for r in recs if "host" in r["result"]), {})
    n_reps = max((len(v) for v in by.values()), default=0)
    lines = [f"Sitting {sitting}, {host.get('cpu', '?')}, {host.get('ncpu', '?')} cores; "
             f"one thread everywhere; median (min–max) of {n_reps} runs per cell.", ""]
    lines.append("| workload | impl | n | samples/s | vs torch eager | vs jax jit | time to first step s | compile s | peak RSS MiB |")
    lines.append("|---|---|---|---|---|---|---|---|---|")
    f0 = lambda v: f"{v:,.0f}"  # noqa: E731
    f2 = lambda v: f"{v:.3f}"  # noqa: E731
    for w in ["W1", "W2", "W3", "W4"]:
        torch_sps = med([r["samples_per_s"] for r in by.get(f"{w}:torch eager", [])])
        jax_sps = med([r["samples_per_s"] for r in by.get(f"{w}:jax jit", [])])
        for impl in ["kpc", "torch eager", "jax jit"]:
            rs = by.get(f"{w}:{impl}")
            if not rs:
                continue
            sps = med([r["samples_per_s"] for r in rs])
            vs_t = f"{sps / torch_sps:.2f}×" if torch_sps else "—"
            vs_j = f"{sps / jax_sps:.2f}×" if jax_sps else "—"
            comp = span([r.get("compile_s") for r in rs], f2) if impl != "torch eager" else "—"
            lines.append(f"| {w} | {impl} | {len(rs)} | {span([r['samples_per_s'] for r in rs], f0)} | {vs_t} | {vs_j} "
                         f"| {span([r['ttfs_s'] for r in rs], f2)} | {comp} | {span([r['peak_rss_mb'] for r in rs], f0)} |")
    kg, tg = by.get("GEMM:kpc", []), by.get("GEMM:torch", [])
    if kg or tg:
        lines += ["", "| GEMM f32, one thread | kpc_sgemm GFLOP/s | torch.mm GFLOP/s | ratio |", "|---|---|---|---|"]
        for shape, tkey in [("128x784x1024", "mm_128x784x1024_gflops"), ("1024x1024x1024", "mm_1024x1024x1024_gflops")]:
            k = med([r.get(shape) for r in kg])
            t = med([r.get(tkey) for r in tg])
            ratio = f"{k / t:.2f}×" if k and t else "—"
            lines.append(f"| {shape} | {span([r.get(shape) for r in kg], lambda v: f'{v:.1f}')} "
                         f"| {span([r.get(tkey) for r in tg], lambda v: f'{v:.1f}')} | {ratio} |")
    text = "\n".join(lines) + "\n"
    (RESULTS / "summary.md").write_text(text)
    return text


def write_docs(text):
    doc = ROOT / "docs" / "benchmarks.md"
    body = doc.read_text()
    begin, end = "<!-- bench:begin -->", "<!-- bench:end -->"
    if begin not in body or end not in body:
        sys.exit(f"{doc} lacks the {begin} … {end} markers")
    head, rest = body.split(begin, 1)
    _, tail = rest.split(end, 1)
    doc.write_text(f"{head}{begin}\n{text}{end}{tail}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--only", nargs="*", default=["W1", "W2", "W3", "W4"], choices=["W1", "W2", "W3", "W4"])
    p.add_argument("--no-gemm", action="store_true", help="skip the GEMM measurements")
    p.add_argument("--summarize", action="store_true", help="only print the table of the last sitting")
    p.add_argument("--write-docs", action="store_true", help="put the table into docs/benchmarks.md")
    args = p.parse_args()
    sitting = None if args.summarize else run(args)
    text = summarize(sitting)
    print(text)
    if args.write_docs:
        write_docs(text)


if __name__ == "__main__":
    main()
