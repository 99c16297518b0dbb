#!/usr/bin/env python
"""PyTorch CPU training-throughput anchors for kpc.

    python bench/torch_bench.py --workload W1 --threads 1 --mode eager

Workloads (see README.md): W1 digits MLP, W2 wide MLP, W3 char GRU,
W4 GRU seq2seq, GEMM (torch.mm roofline).
Modes: eager | compile (torch.compile of forward+loss, so AOTAutograd also
compiles the backward, plus torch.compile of optimizer.step) | compile_fwd
(forward+loss(+backward) compiled, optimizer eager).

Prints exactly one JSON line on stdout.
"""
import time

T_INTERP = time.time()  # first statement: interpreter start-up is done

import argparse  # noqa: E402
import atexit  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workload", required=True, choices=["W1", "W2", "W3", "W4", "GEMM"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--mode", default="eager", choices=["eager", "compile", "compile_fwd"])
    p.add_argument("--data-dir", default=None, help="default: <repo>/examples/data")
    p.add_argument("--warmup-epochs", type=int, default=1,
                   help="full epochs before timing (covers every batch shape, so all "
                        "compiles/recompiles happen here)")
    p.add_argument("--min-time", type=float, default=3.0,
                   help="time whole epochs until at least this many seconds have elapsed")
    p.add_argument("--min-epochs", type=int, default=1)
    p.add_argument("--max-epochs", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warm-cache", action="store_true",
                   help="compile modes: use the default (persistent) inductor cache instead "
                        "of a fresh empty one, i.e. do not measure a cold compile")
    return p.parse_args()


ARGS = parse_args()
# Thread count must be fixed before torch (and its OpenMP/MKL) is loaded.
for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(ARGS.threads)
if ARGS.mode.startswith("compile") and not ARGS.warm_cache:
    _cache = tempfile.mkdtemp(prefix="kpc_anchor_inductor_")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = _cache
    atexit.register(shutil.rmtree, _cache, True)

import common  # noqa: E402

SNAP_START = common.cpu_snapshot()
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.nn.utils.rnn import pack_padded_sequence  # noqa: E402

T_IMPORT = time.time()
RSS_AFTER_IMPORT = common.cur_rss_mb()
torch.set_num_threads(ARGS.threads)


# ----------------------------------------------------------------------------
# models: each has .loss(*batch) -> scalar
# ----------------------------------------------------------------------------

class DigitsMLP(nn.Module):  # W1
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 128), nn.BatchNorm1d(128), nn.ReLU(),
                                 nn.Dropout(0.2), nn.Linear(128, 10))

    def loss(self, x, y):
        return F.cross_entropy(self.net(x), y)


class WideMLP(nn.Module):  # W2
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(),
                                 nn.Linear(1024, 10))

    def loss(self, x, y):
        return F.cross_entropy(self.net(x), y)


class CharGRU(nn.Module):  # W3
    def __init__(self, vocab, classes):
        super().__init__()
        self.emb = nn.Embedding(vocab, 32, padding_idx=0)
        self.rnn = nn.GRU(32, 128, batch_first=True)
        self.out = nn.Linear(128, classes)

    def loss(self, chars, lengths, y):
        e = self.emb(chars)
        packed = pack_padded_sequence(e, lengths, batch_first=True, enforce_sorted=False)
        _, h = self.rnn(packed)          # h: [1, B, 128], already in the batch's order
        return F.cross_entropy(self.out(h[-1]), y)


class Seq2Seq(nn.Module):  # W4
    def __init__(self, vs, vt):
        super().__init__()
        self.vt = vt
        self.src_emb = nn.Embedding(vs, 64, padding_idx=0)
        self.tgt_emb = nn.Embedding(vt, 64, padding_idx=0)
        self.encoder = nn.GRU(64, 128, batch_first=True)
        self.decoder = nn.GRU(64, 128, batch_first=True)
        self.proj = nn.Linear(128, vt)

    def loss(self, doc, doc_len, name):
        packed = pack_padded_sequence(self.src_emb(doc), doc_len, batch_first=True,
                                      enforce_sorted=False)
        _, h = self.encoder(packed)      # final (last valid step) hidden, [1, B, 128]
        # Teacher forcing.  The decoder runs over the padded target; outputs at
        # padded steps are ignored by the loss (ignore_index=0), so loss and
        # gradients equal those of a packed decoder.
        out, _ = self.decoder(self.tgt_emb(name[:, :-1]), h)
        logits = self.proj(out)
        return F.cross_entropy(logits.reshape(-1, self.vt), name[:, 1:].reshape(-1), ignore_index=0)


# ----------------------------------------------------------------------------

def build(workload, data_dir):
    global t_data
    t0 = time.time()
    if workload == "W1":
        raw, info = common.load_digits(data_dir, 64, ARGS.seed)
        batches = [(torch.from_numpy(x), torch.from_numpy(y)) for x, y in raw]
        t_data = time.time() - t0
        model = DigitsMLP()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    elif workload == "W2":
        raw, info = common.load_synthetic(8192, 784, 10, 128, ARGS.seed)
        batches = [(torch.from_numpy(x), torch.from_numpy(y)) for x, y in raw]
        t_data = time.time() - t0
        model = WideMLP()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    elif workload == "W3":
        raw, info = common.load_words(data_dir, 64, ARGS.seed)
        batches = [tuple(torch.from_numpy(a) for a in b) for b in raw]
        t_data = time.time() - t0
        model = CharGRU(info["vocab"], info["classes"])
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    elif workload == "W4":
        raw, info = common.load_docnames(data_dir, 64, ARGS.seed)
        batches = [tuple(torch.from_numpy(a) for a in b) for b in raw]
        t_data = time.time() - t0
        model = Seq2Seq(info["src_vocab"], info["trg_vocab"])
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    else:
        raise ValueError(workload)
    info["params"] = sum(p.numel() for p in model.parameters())
    info["batches_per_epoch"] = len(batches)
    return model, opt, batches, info


t_data = None


def run_training():
    data_dir = ARGS.data_dir or str(common.DEFAULT_DATA_DIR)
    torch.manual_seed(ARGS.seed)
    t0 = time.time()
    model, opt, batches, info = build(ARGS.workload, data_dir)
    model.train()
    t_setup = time.time() - t0
    samples_per_epoch = sum(int(b[0].shape[0]) for b in batches)

    def fwd_loss(*b):
        return model.loss(*b)

    loss_fn = fwd_loss
    opt_step = opt.step
    if ARGS.mode in ("compile", "compile_fwd"):
        loss_fn = torch.compile(fwd_loss)
    if ARGS.mode == "compile":
        opt_step = torch.compile(opt.step)

    def train_step(b):
        loss = loss_fn(*b)
        loss.backward()
        opt_step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    # first optimizer step: time-to-first-step
    t = time.perf_counter()
    first_loss = train_step(batches[0]).item()
    first_step_s = time.perf_counter() - t
    ttfs, ttfs_src = common.ttfs_now()
    t_first_end = time.time()

    # warm-up epochs (all batch shapes -> all compiles/recompiles happen here)
    t = time.perf_counter()
    for _ in range(ARGS.warmup_epochs):
        for b in batches:
            train_step(b)
    warmup_s = time.perf_counter() - t

    # timed, steady state: whole epochs over pre-batched in-memory tensors
    epoch_times, epoch_losses = [], []
    snap0 = common.cpu_snapshot()
    cpu0 = time.process_time()
    while True:
        losses = []
        t = time.perf_counter()
        for b in batches:
            losses.append(train_step(b))
        epoch_times.append(time.perf_counter() - t)
        epoch_losses.append(torch.stack(losses).mean().item())
        tot = sum(epoch_times)
        if (len(epoch_times) >= ARGS.min_epochs and tot >= ARGS.min_time) or \
                len(epoch_times) >= ARGS.max_epochs:
            break
    cpu = time.process_time() - cpu0
    snap1 = common.cpu_snapshot()

    res = common.summarize_epochs(epoch_times, samples_per_epoch)
    warm_samples = samples_per_epoch * ARGS.warmup_epochs + int(batches[0][0].shape[0])
    res.update({
        "step_ms": 1000.0 * res["timed_s"] / (len(batches) * res["timed_epochs"]),
        "cpu_util": cpu / res["timed_s"],
        "ttfs_s": ttfs, "ttfs_src": ttfs_src,
        "ttfs_from_interp_s": t_first_end - T_INTERP,
        "import_s": T_IMPORT - T_INTERP,
        "data_s": t_data,
        # model + optimizer construction; the first optimizer construction lazily
        # imports torch._dynamo (~1.5 s here), even in eager mode
        "model_opt_s": t_setup - t_data,
        "first_step_s": first_step_s,
        "warmup_s": warmup_s,
        # time spent in the first step + warm-up beyond what steady state would need:
        # for compile modes this is the (cold) compile + recompile cost
        "startup_overhead_s": first_step_s + warmup_s - warm_samples / res["samples_per_s"],
        "loss_first_step": first_loss,
        "loss_first_timed_epoch": epoch_losses[0],
        "loss_last_timed_epoch": epoch_losses[-1],
        "samples_per_epoch": samples_per_epoch,
        "data": info,
        "timed_load": common.background_load(snap0, snap1),
    })
    if ARGS.mode.startswith("compile"):
        from torch._dynamo.utils import counters
        res["dynamo_unique_graphs"] = int(counters["stats"].get("unique_graphs", 0))
        res["dynamo_graph_breaks"] = int(sum(counters["graph_break"].values()))
        res["dynamo_graph_break_reasons"] = [k[:160] for k in list(counters["graph_break"])[:5]]
        res["dynamo_recompiles"] = int(counters["recompiles"].get("total", 0)) if "recompiles" in counters else None
        res["compile_s"] = res["startup_overhead_s"]
    return res


def run_gemm():
    out = {}
    for name, (M, K, N), linear in [("mm_128x784x1024", (128, 784, 1024), False),
                                    ("mm_1024x1024x1024", (1024, 1024, 1024), False),
                                    ("linear_128x784x1024", (128, 784, 1024), True)]:
        a = torch.randn(M, K)
        if linear:  # what nn.Linear does: x @ W^T + b with W stored [out, in]
            w = torch.randn(N, K)
            bias = torch.randn(N)
            fn = lambda: F.linear(a, w, bias)  # noqa: E731
        else:
            b = torch.randn(K, N)
            c = torch.empty(M, N)
            fn = lambda: torch.mm(a, b, out=c)  # noqa: E731
        for _ in range(5):
            fn()
        snap0 = common.cpu_snapshot()
        n, t = 0, time.perf_counter()
        cpu0 = time.process_time()
        while True:
            fn()
            n += 1
            dt = time.perf_counter() - t
            if dt >= max(ARGS.min_time / 3, 0.5):
                break
        out[name + "_gflops"] = 2.0 * M * N * K * n / dt / 1e9
        out[name + "_cpu_util"] = (time.process_time() - cpu0) / dt
        out[name + "_load"] = common.background_load(snap0, common.cpu_snapshot())
    return out


def main():
    if ARGS.workload == "GEMM":
        if ARGS.mode != "eager":
            sys.exit("GEMM is eager only")
        res = run_gemm()
    else:
        res = run_training()
    out = {"bench": "torch", "workload": ARGS.workload, "mode": ARGS.mode, "threads": ARGS.threads}
    out.update(res)
    out.update({
        # background load over the whole process lifetime (affects ttfs/compile)
        "whole_load": common.background_load(SNAP_START, common.cpu_snapshot()),
        "peak_rss_mb": common.peak_rss_mb(),
        "rss_after_import_mb": RSS_AFTER_IMPORT,
        # current RSS of live child processes (inductor compile workers), if any
        "children_rss_mb": common.children_rss_mb(),
        "torch": torch.__version__,
        "torch_num_threads": torch.get_num_threads(),
        "host": common.host_info(),
    })
    common.emit(out)


if __name__ == "__main__":
    main()
