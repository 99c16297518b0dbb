"""Shared helpers for the anchor benchmarks (torch_bench.py, jax_bench.py).

Only the standard library and numpy are used here, so that importing this
module does not pull in torch or jax (their import time is part of the
time-to-first-step that the benchmarks report).

Data encoding follows docs/language.md §3:
  * id 0 = padding, id 1 = unknown, with bos/eos ids 2 and 3;
  * other tokens take the next ids in order of decreasing train-set count,
    ties broken by code-point order; tokens seen < min_freq times -> unknown;
  * labels are numbered in code-point order of their strings.
"""
import json
import os
import platform
import resource
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_DATA_DIR = HERE.parent / "examples" / "data"  # the project's data, beside bench/

PAD, UNK, BOS, EOS = 0, 1, 2, 3


# ----------------------------------------------------------------------------
# timing / memory
# ----------------------------------------------------------------------------

def seconds_since_process_start():
    """Wall seconds since this process was forked (from /proc/self/stat,
    10 ms resolution).  Used when the harness did not pass BENCH_T0."""
    with open("/proc/self/stat") as f:
        s = f.read()
    fields = s[s.rfind(")") + 2:].split()
    start_ticks = int(fields[19])  # field 22 of stat(5); fields[0] is field 3
    return time.clock_gettime(time.CLOCK_BOOTTIME) - start_ticks / os.sysconf("SC_CLK_TCK")


def ttfs_now():
    """Time-to-first-step measured *now*: seconds from process start.

    If the launcher exported BENCH_T0 (a time.time() stamp taken just before
    it spawned us) that is used (it includes exec + interpreter start-up);
    otherwise the kernel's process start time is used."""
    t0 = os.environ.get("BENCH_T0")
    if t0:
        return time.time() - float(t0), "BENCH_T0"
    return seconds_since_process_start(), "proc_stat"


def cpu_snapshot():
    """(monotonic s, machine busy CPU-s incl. steal, this process's CPU-s, steal CPU-s).

    Busy time comes from /proc/stat (10 ms ticks); this process's own CPU time
    (all threads) from os.times().  Used to measure how much *other* work ran
    on the machine during a measurement (the machine may be shared)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    tck = float(os.sysconf("SC_CLK_TCK"))
    # user nice system idle iowait irq softirq steal ...
    busy = (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / tck
    t = os.times()
    own = t.user + t.system + t.children_user + t.children_system + _live_descendants_cpu()
    return (time.monotonic(), busy, own, v[7] / tck)


def background_load(s0, s1):
    """Average number of cores used by anything other than this process
    (other processes, kernel threads, hypervisor steal) between two snapshots."""
    dt = s1[0] - s0[0]
    if dt <= 0:
        return {"bg_cores": None, "steal_cores": None}
    return {"bg_cores": round(max(0.0, (s1[1] - s0[1]) - (s1[2] - s0[2])) / dt, 4),
            "steal_cores": round((s1[3] - s0[3]) / dt, 4)}


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _proc_table():
    """{pid: (ppid, utime+stime seconds, rss MiB)} for every readable process."""
    tck = float(os.sysconf("SC_CLK_TCK"))
    page = os.sysconf("SC_PAGE_SIZE") / 2**20
    table = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                s = f.read()
            fl = s[s.rfind(")") + 2:].split()
            # fields[1]=ppid (field 4); utime, stime, cutime, cstime = fields 14-17
            # (cutime/cstime: reaped children, e.g. gcc run by a compile worker);
            # rss pages = field 24
            cpu = sum(int(x) for x in fl[11:15]) / tck
            table[int(d)] = (int(fl[1]), cpu, int(fl[21]) * page)
        except (OSError, ValueError, IndexError):
            continue
    return table


def _live_descendants(table):
    out, frontier = [], {os.getpid()}
    while frontier:
        nxt = {p for p, row in table.items() if row[0] in frontier}
        out.extend(nxt)
        frontier = nxt
    return out


def _live_descendants_cpu():
    table = _proc_table()
    return sum(table[p][1] for p in _live_descendants(table))


def children_rss_mb():
    """Sum of the current RSS of live descendant processes (e.g. inductor's
    compile-worker pool).  RUSAGE_CHILDREN is not used: it only covers reaped
    children and counts a vfork'ed `ldconfig` (run by `import torch`) with the
    parent's RSS."""
    table = _proc_table()
    return round(sum(table[p][2] for p in _live_descendants(table)), 1)


def cur_rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def host_info():
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "ncpu": os.cpu_count(),
        "affinity": sorted(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def emit(result):
    print(json.dumps(result, sort_keys=False), flush=True)


# ----------------------------------------------------------------------------
# vocabularies (spec section 3)
# ----------------------------------------------------------------------------

def build_vocab(token_lists, min_freq=1, bos_eos=False):
    counts = Counter(t for toks in token_lists for t in toks)
    first = 4 if bos_eos else 2
    kept = [t for t, c in counts.items() if c >= min_freq]
    kept.sort(key=lambda t: (-counts[t], t))
    return {t: i + first for i, t in enumerate(kept)}, first + len(kept)


def encode(tokens, vocab, bos_eos=False):
    ids = [vocab.get(t, UNK) for t in tokens]
    if bos_eos:
        ids = [BOS] + ids + [EOS]
    return ids


def pad_batch(seqs):
    T = max(len(s) for s in seqs)
    out = np.zeros((len(seqs), T), dtype=np.int64)
    for i, s in enumerate(seqs):
        out[i, :len(s)] = s
    return out


def batch_slices(n, batch_size):
    """drop_last = false: the last partial batch is kept."""
    return [(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


# ----------------------------------------------------------------------------
# datasets -> lists of pre-batched numpy arrays (converted by each framework)
# ----------------------------------------------------------------------------

def load_digits(data_dir, batch_size=64, seed=0):
    """W1: digits_train.csv, header row, last column 'label', features / 16."""
    arr = np.loadtxt(Path(data_dir) / "digits_train.csv", delimiter=",", skiprows=1,
                     dtype=np.float64)
    x = (arr[:, :-1] / 16.0).astype(np.float32)
    y = arr[:, -1].astype(np.int64)
    perm = np.random.default_rng(seed).permutation(len(y))
    x, y = x[perm], y[perm]
    batches = [(x[a:b], y[a:b]) for a, b in batch_slices(len(y), batch_size)]
    return batches, {"rows": int(len(y)), "features": int(x.shape[1]),
                     "classes": int(y.max() + 1)}


def load_synthetic(rows=8192, features=784, classes=10, batch_size=128, seed=0):
    """W2: random synthetic data (standard-normal features, uniform labels)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, features), dtype=np.float32)
    y = rng.integers(0, classes, size=rows).astype(np.int64)
    batches = [(x[a:b], y[a:b]) for a, b in batch_slices(rows, batch_size)]
    return batches, {"rows": rows, "features": features, "classes": classes}


def load_words(data_dir, batch_size=64, seed=0):
    """W3: words_train.jsonl, chars('word') -> ids (pad 0, unk 1), label('lang')."""
    rows = [json.loads(l) for l in open(Path(data_dir) / "words_train.jsonl", encoding="utf-8")]
    toks = [list(r["word"]) for r in rows]
    vocab, V = build_vocab(toks, min_freq=1)
    labels = sorted({r["lang"] for r in rows})
    lab = {s: i for i, s in enumerate(labels)}
    seqs = [encode(t, vocab) for t in toks]
    ys = np.array([lab[r["lang"]] for r in rows], dtype=np.int64)
    perm = np.random.default_rng(seed).permutation(len(rows))
    batches = []
    for a, b in batch_slices(len(rows), batch_size):
        idx = perm[a:b]
        s = [seqs[i] for i in idx]
        batches.append((pad_batch(s), np.array([len(q) for q in s], dtype=np.int64), ys[idx]))
    return batches, {"rows": len(rows), "vocab": V, "classes": len(labels),
                     "tokens": int(sum(len(s) for s in seqs)),
                     "padded_tokens": int(sum(b[0].size for b in batches))}


def load_docnames(data_dir, batch_size=64, seed=0, cap=30, min_freq=2):
    """W4: docnames_train.jsonl; doc = words(min_freq=2), capped at `cap`
    tokens; name = words(min_freq=2, bos, eos)."""
    rows = [json.loads(l) for l in open(Path(data_dir) / "docnames_train.jsonl", encoding="utf-8")]
    dtoks = [r["doc"].split()[:cap] for r in rows]
    ntoks = [r["name"].split() for r in rows]
    dv, Vs = build_vocab(dtoks, min_freq=min_freq)
    nv, Vt = build_vocab(ntoks, min_freq=min_freq, bos_eos=True)
    src = [encode(t, dv) for t in dtoks]
    trg = [encode(t, nv, bos_eos=True) for t in ntoks]
    perm = np.random.default_rng(seed).permutation(len(rows))
    batches = []
    for a, b in batch_slices(len(rows), batch_size):
        idx = perm[a:b]
        s = [src[i] for i in idx]
        t = [trg[i] for i in idx]
        batches.append((pad_batch(s), np.array([len(q) for q in s], dtype=np.int64), pad_batch(t)))
    return batches, {"rows": len(rows), "src_vocab": Vs, "trg_vocab": Vt,
                     "src_tokens": int(sum(len(s) for s in src)),
                     "trg_pred_tokens": int(sum(len(t) - 1 for t in trg))}


def summarize_epochs(epoch_times, samples_per_epoch):
    tot = float(sum(epoch_times))
    n = len(epoch_times)
    return {
        "samples_per_s": samples_per_epoch * n / tot,
        "timed_epochs": n,
        "timed_samples": samples_per_epoch * n,
        "timed_s": tot,
        "best_epoch_samples_per_s": samples_per_epoch / min(epoch_times),
    }
