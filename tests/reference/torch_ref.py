"""PyTorch replays of kpc's parity jobs (tests/reference/jobs/*.train).

For each job this script builds the equivalent nn.Module by hand, loads the initial weights
kpc wrote with `kpc init`, trains with shuffle off exactly as LANGUAGE.md §8/§10 describe
(batches in file order, accumulation, clipping, the optimizer, the schedule's closed form),
evaluates after every epoch, and writes one JSON line per optimizer step and per epoch:

    {"kind":"step","epoch":E,"step":S,"loss":L,"lr":R}
    {"kind":"epoch","epoch":E,"train_loss":L,"eval_loss":..,"eval_<metric>":..}

It also loads kpc's `--save` output for the job (if present) into the module with
load_state_dict(strict=True) and records its eval loss as {"kind":"saved","eval_loss":..}.

Run outside CI (needs torch, safetensors, numpy), from the repository root:

    kpc init tests/reference/jobs/NAME.train -o tests/golden/torch/NAME.init.safetensors
    kpc run  tests/reference/jobs/NAME.train --init tests/golden/torch/NAME.init.safetensors \
             --save /tmp/NAME.saved.safetensors --quiet
    python tests/reference/torch_ref.py NAME --saved /tmp/NAME.saved.safetensors \
             > tests/golden/torch/NAME.jsonl

`tests/reference/regenerate.sh` does all of that for every job.
"""
import argparse
import csv
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "examples" / "data"
torch.set_default_dtype(torch.float32)
torch.use_deterministic_algorithms(True)


def read_csv(name, x_cols, y_col, y_dtype):
    with open(DATA / name, newline="") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    if x_cols == "rest":
        x_idx = [i for i, h in enumerate(header) if h != y_col]
    else:
        x_idx = [header.index(c) for c in x_cols]
    y_idx = header.index(y_col)
    x = torch.tensor(np.array([[np.float32(r[i]) for i in x_idx] for r in body], dtype=np.float32))
    y = torch.tensor(np.array([np.float32(r[y_idx]) for r in body], dtype=np.float32))
    if y_dtype == "i64":
        y = y.to(torch.int64)
    return x, y


# ---------------------------------------------------------------------------------------
# Schedules: PyTorch's closed forms (torch.optim.lr_scheduler._get_closed_form_lr), in f64.

def schedule_lr(kind, base, t, **a):
    if kind == "constant":
        return base
    if kind == "step_lr":
        return base * a.get("gamma", 0.1) ** (t // a["step_size"])
    if kind == "multistep_lr":
        return base * a.get("gamma", 0.1) ** sum(1 for m in a["milestones"] if m <= t)
    if kind == "exponential_lr":
        return base * a["gamma"] ** t
    if kind == "cosine_lr":
        eta_min = a.get("eta_min", 0.0)
        return eta_min + (base - eta_min) * (1 + math.cos(math.pi * t / a["t_max"])) / 2
    raise ValueError(kind)


# ---------------------------------------------------------------------------------------
# Jobs. Each returns a dict: module, data, loss_terms, metrics, optimizer, schedule, loop.

class Seq(nn.Module):
    """Named submodules applied by a forward function, so state_dict names match kpc's."""

    def __init__(self, forward, **layers):
        super().__init__()
        for k, v in layers.items():
            setattr(self, k, v)
        self._fwd = forward

    def forward(self, x):
        return self._fwd(self, x)


def ce_terms(label_smoothing=0.0):
    return [(1.0, lambda out, y, red: F.cross_entropy(out, y, reduction=red, label_smoothing=label_smoothing), "mean")]


def accuracy_classes(out, y):
    return (out.argmax(dim=-1) == y).sum().item(), y.numel()


def accuracy_binary(prob, y, threshold=0.5):
    return ((prob > threshold) == (y >= 0.5)).sum().item(), y.numel()


def top_k(out, y, k):
    top = out.topk(k, dim=-1).indices
    return (top == y.unsqueeze(-1)).any(dim=-1).sum().item(), y.numel()


def job_iris_sgd_nesterov():
    m = Seq(lambda s, x: s.fc2(torch.tanh(s.fc1(x))), fc1=nn.Linear(4, 8), fc2=nn.Linear(8, 3))
    return dict(
        module=m,
        train=read_csv("iris_train.csv", "rest", "label", "i64"),
        eval=read_csv("iris_test.csv", "rest", "label", "i64"),
        loss=ce_terms(),
        metrics={"eval_accuracy": accuracy_classes},
        opt=lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
        base_lr=0.05,
        schedule=("step_lr", dict(step_size=2, gamma=0.5), "epoch", 0),
        epochs=5, batch_size=8, accumulate=1, clip=None, drop_last=False,
    )


def job_digits_adam_bn():
    m = Seq(lambda s, x: s.fc2(torch.relu(s.bn1(s.fc1(x / 16)))), fc1=nn.Linear(64, 32, bias=False), bn1=nn.BatchNorm1d(32), fc2=nn.Linear(32, 10))
    return dict(
        module=m,
        train=read_csv("digits_train.csv", "rest", "label", "i64"),
        eval=read_csv("digits_test.csv", "rest", "label", "i64"),
        loss=ce_terms(0.1),
        metrics={"eval_accuracy": accuracy_classes, "eval_top_k": lambda o, y: top_k(o, y, 3)},
        opt=lambda p: torch.optim.Adam(p, lr=2e-3, amsgrad=True),
        base_lr=2e-3,
        schedule=("cosine_lr", dict(t_max=40, eta_min=1e-4), "step", 10),
        epochs=3, batch_size=64, accumulate=1, clip=None, drop_last=False,
    )


def job_cancer_adamw_accumulate():
    m = Seq(
        lambda s, x: torch.sigmoid(s.out(torch.tanh(s.hidden(s.norm(x))))).squeeze(-1),
        norm=nn.BatchNorm1d(30, affine=False), hidden=nn.Linear(30, 16), out=nn.Linear(16, 1),
    )
    return dict(
        module=m,
        train=read_csv("breast_cancer_train.csv", "rest", "label", "f32"),
        eval=read_csv("breast_cancer_test.csv", "rest", "label", "f32"),
        loss=[(1.0, lambda p, y, red: F.binary_cross_entropy(p, y, reduction=red), "sum")],
        metrics={"eval_accuracy": accuracy_binary},
        opt=lambda p: torch.optim.AdamW(p, lr=3e-3, weight_decay=0.05),
        base_lr=3e-3,
        schedule=("exponential_lr", dict(gamma=0.9), "epoch", 0),
        epochs=5, batch_size=16, accumulate=3, clip=1.0, drop_last=False,
    )


def job_wine_rmsprop_layernorm():
    m = Seq(
        lambda s, x: F.log_softmax(s.fc2(F.gelu(s.norm(s.fc1(x / 100)))), dim=-1),
        fc1=nn.Linear(13, 16), norm=nn.LayerNorm(16), fc2=nn.Linear(16, 3),
    )
    return dict(
        module=m,
        train=read_csv("wine_train.csv", "rest", "label", "i64"),
        eval=read_csv("wine_test.csv", "rest", "label", "i64"),
        loss=[(1.0, lambda o, y, red: F.nll_loss(o, y, reduction=red), "mean")],
        metrics={"eval_accuracy": accuracy_classes},
        opt=lambda p: torch.optim.RMSprop(p, lr=1e-2, centered=True, momentum=0.5),
        base_lr=1e-2,
        schedule=("multistep_lr", dict(milestones=(10, 30), gamma=0.3), "step", 0),
        epochs=6, batch_size=16, accumulate=1, clip=None, drop_last=False,
    )


def job_cancer_logits_mixed():
    m = Seq(lambda s, x: s.out(s.norm(x)).squeeze(-1), norm=nn.BatchNorm1d(30), out=nn.Linear(30, 1))
    return dict(
        module=m,
        train=read_csv("breast_cancer_train.csv", "rest", "label", "f32"),
        eval=read_csv("breast_cancer_test.csv", "rest", "label", "f32"),
        loss=[
            (1.0, lambda o, y, red: F.binary_cross_entropy_with_logits(o, y, reduction=red), "mean"),
            (0.5, lambda o, y, red: F.mse_loss(torch.sigmoid(o), y, reduction=red), "mean"),
            (0.1, lambda o, y, red: F.l1_loss(torch.sigmoid(o), y, reduction=red), "sum"),
        ],
        metrics={
            "eval_accuracy": lambda o, y: accuracy_binary(torch.sigmoid(o), y),
            "eval_mae": lambda o, y: (F.l1_loss(torch.sigmoid(o), y, reduction="sum").item(), y.numel()),
        },
        opt=lambda p: torch.optim.SGD(p, lr=0.05),
        base_lr=0.05,
        schedule=("exponential_lr", dict(gamma=0.99), "step", 0),
        epochs=4, batch_size=32, accumulate=1, clip=None, drop_last=False,
    )


def job_wine_regression_sgd():
    cols = [f"f{i}" for i in range(1, 12)]
    m = Seq(lambda s, x: s.fc2(torch.relu(s.fc1(x / 10))).squeeze(-1), fc1=nn.Linear(11, 8), fc2=nn.Linear(8, 1))
    return dict(
        module=m,
        train=read_csv("wine_train.csv", cols, "f0", "f32"),
        eval=read_csv("wine_test.csv", cols, "f0", "f32"),
        loss=[(1.0, lambda o, t, red: F.mse_loss(o, t / 10, reduction=red), "mean")],
        metrics={
            "eval_mae": lambda o, t: (F.l1_loss(o, t / 10, reduction="sum").item(), t.numel()),
            "eval_l1": lambda o, t: (F.l1_loss(o, t / 10, reduction="sum").item(), None),
        },
        opt=lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.5, dampening=0.5),
        base_lr=0.01,
        schedule=("constant", {}, "epoch", 0),
        epochs=6, batch_size=10, accumulate=1, clip=None, drop_last=True,
    )


# ---------------------------------------------------------------------------------------
# Sequence jobs: jsonl data encoded by LANGUAGE.md §3's rules, packed sequences.

REF_DATA = ROOT / "tests" / "reference" / "data"


def tokens(text, unit, max_len=None):
    t = list(text) if unit == "chars" else text.split()
    return t[:max_len] if max_len else t


def vocab(rows, min_freq=1, special=False):
    from collections import Counter
    counts = Counter(tok for r in rows for tok in r)
    first = 4 if special else 2
    kept = sorted((tok for tok, c in counts.items() if c >= min_freq), key=lambda tok: (-counts[tok], tok))
    return {tok: first + i for i, tok in enumerate(kept)}


def encode(rows, ids, bos=False, eos=False):
    out = []
    for r in rows:
        seq = [ids.get(t, 1) for t in r]
        if bos:
            seq = [2] + seq
        if eos:
            seq = seq + [3]
        out.append(seq)
    return out


def read_jsonl(name):
    with open(REF_DATA / name) as f:
        return [json.loads(line) for line in f if line.strip()]


def words_data():
    tr, te = read_jsonl("words_small_train.jsonl"), read_jsonl("words_small_test.jsonl")
    ids = vocab([tokens(r["word"], "chars") for r in tr])
    classes = sorted({r["lang"] for r in tr})
    cls = {c: i for i, c in enumerate(classes)}
    def enc(rows):
        return encode([tokens(r["word"], "chars") for r in rows], ids), torch.tensor([cls[r["lang"]] for r in rows])
    return enc(tr), enc(te), len(ids) + 2, len(classes)


def pad(seqs):
    t = max(len(s) for s in seqs)
    x = torch.zeros(len(seqs), t, dtype=torch.int64)
    for i, s in enumerate(seqs):
        x[i, :len(s)] = torch.tensor(s, dtype=torch.int64)
    return x, torch.tensor([len(s) for s in seqs])


class SeqClassifier(nn.Module):
    """embedding → rnn/gru/lstm (packed) → mean or last → linear."""

    def __init__(self, kind, vocab_size, classes, readout):
        super().__init__()
        self.emb = nn.Embedding(vocab_size, 16, padding_idx=0)
        self.rnn = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}[kind](16, 32, batch_first=True)
        self.out = nn.Linear(32, classes)
        self.readout = readout

    def forward(self, batch):
        x, lengths = batch
        packed = nn.utils.rnn.pack_padded_sequence(self.emb(x), lengths, batch_first=True, enforce_sorted=False)
        out, h = self.rnn(packed)
        if self.readout == "last":
            h = h[0] if isinstance(h, tuple) else h
            z = h[0]
        else:
            y, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True)
            z = y.sum(dim=1) / lengths.unsqueeze(1).to(y.dtype)
        return self.out(z)


def seq_job(kind, readout, opt, loss_red="mean"):
    (trx, try_), (tex, tey), v, c = words_data()
    return dict(
        module=SeqClassifier(kind, v, c, readout),
        train=(trx, try_), eval=(tex, tey), collate=pad,
        loss=[(1.0, lambda o, y, red: F.cross_entropy(o, y, reduction=red), loss_red)],
        metrics={"eval_accuracy": accuracy_classes},
        opt=opt, base_lr=opt([nn.Parameter(torch.zeros(1))]).param_groups[0]["lr"],
        schedule=("constant", {}, "epoch", 0),
        epochs=1, batch_size=64, accumulate=1, clip=None, drop_last=False,
    )


def job_words_rnn_mean():
    return seq_job("rnn", "mean", lambda p: torch.optim.SGD(p, lr=0.002, momentum=0.9), "sum")


def job_words_gru_last():
    return seq_job("gru", "last", lambda p: torch.optim.Adam(p, lr=3e-3))


def job_words_lstm_last():
    return seq_job("lstm", "last", lambda p: torch.optim.RMSprop(p, lr=3e-3))


class SeqBatchNorm(nn.Module):
    """embedding → gru → BatchNorm1d on the packed data → mean over valid steps → linear."""

    def __init__(self, vocab_size, classes):
        super().__init__()
        self.emb = nn.Embedding(vocab_size, 16, padding_idx=0)
        self.rnn = nn.GRU(16, 32, batch_first=True)
        self.bn = nn.BatchNorm1d(32)
        self.out = nn.Linear(32, classes)

    def forward(self, batch):
        x, lengths = batch
        packed = nn.utils.rnn.pack_padded_sequence(self.emb(x), lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.rnn(packed)
        normed = nn.utils.rnn.PackedSequence(self.bn(out.data), out.batch_sizes, out.sorted_indices, out.unsorted_indices)
        y, _ = nn.utils.rnn.pad_packed_sequence(normed, batch_first=True)
        return self.out(y.sum(dim=1) / lengths.unsqueeze(1).to(y.dtype))


def job_words_gru_batchnorm():
    job = seq_job("gru", "mean", lambda p: torch.optim.Adam(p, lr=3e-3))
    (_, _), (_, _), v, c = words_data()
    job["module"] = SeqBatchNorm(v, c)
    return job


class Seq2Seq(nn.Module):
    def __init__(self, vs, vt):
        super().__init__()
        self.src_emb = nn.Embedding(vs, 16, padding_idx=0)
        self.tgt_emb = nn.Embedding(vt, 16, padding_idx=0)
        self.encoder = nn.GRU(16, 32, batch_first=True)
        self.decoder = nn.GRU(16, 32, batch_first=True)
        self.proj = nn.Linear(32, vt)

    def forward(self, batch):
        (doc, dl), (name, nl) = batch
        packed = nn.utils.rnn.pack_padded_sequence(self.src_emb(doc), dl, batch_first=True, enforce_sorted=False)
        _, h = self.encoder(packed)
        inp = name[:, :-1]
        packed = nn.utils.rnn.pack_padded_sequence(self.tgt_emb(inp), nl - 1, batch_first=True, enforce_sorted=False)
        out, _ = self.decoder(packed, h)
        y, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=inp.shape[1])
        return self.proj(y)


def job_docnames_gru_seq2seq():
    tr, te = read_jsonl("docnames_small_train.jsonl"), read_jsonl("docnames_small_test.jsonl")
    dv = vocab([tokens(r["doc"], "words", 20) for r in tr], min_freq=2)
    nv = vocab([tokens(r["name"], "words") for r in tr], min_freq=2, special=True)
    def enc(rows):
        d = encode([tokens(r["doc"], "words", 20) for r in rows], dv)
        n = encode([tokens(r["name"], "words") for r in rows], nv, bos=True, eos=True)
        return list(zip(d, n)), n
    (trx, trn), (tex, ten) = enc(tr), enc(te)
    def collate(pairs):
        return pad([p[0] for p in pairs]), pad([p[1] for p in pairs])
    def targets(rows):
        return rows
    def ce(o, names, red):
        tgt, _ = pad([n for n in names])
        tgt = tgt[:, 1:]
        return F.cross_entropy(o.reshape(-1, o.shape[-1]), tgt.reshape(-1), ignore_index=0, reduction=red)
    def acc(o, names):
        tgt, _ = pad([n for n in names])
        tgt = tgt[:, 1:]
        valid = tgt != 0
        return ((o.argmax(-1) == tgt) & valid).sum().item(), valid.sum().item()
    def count(names):
        tgt, _ = pad([n for n in names])
        return (tgt[:, 1:] != 0).sum().item()
    return dict(
        module=Seq2Seq(len(dv) + 2, len(nv) + 4),
        train=(trx, trn), eval=(tex, ten), collate=collate, count=count,
        loss=[(1.0, ce, "mean")],
        metrics={"eval_accuracy": acc},
        opt=lambda p: torch.optim.Adam(p, lr=3e-3),
        base_lr=3e-3,
        schedule=("exponential_lr", dict(gamma=0.99), "step", 0),
        epochs=1, batch_size=64, accumulate=1, clip=1.0, drop_last=False,
    )


JOBS = {name[4:]: fn for name, fn in globals().items() if name.startswith("job_")}


# ---------------------------------------------------------------------------------------

def loss_value(terms, out, y):
    return sum(w * fn(out, y, red) for w, fn, red in terms)


def batch_of(job, x, i, bs):
    xb = x[i:i + bs]
    return job["collate"](xb) if "collate" in job else xb


def evaluate(job, module):
    """Eval loss and metrics over the whole eval set, aggregated per term (§5)."""
    module.eval()
    x, y = job["eval"]
    bs = job["batch_size"]
    sums = [0.0] * len(job["loss"])
    metric_sums = {k: [0.0, 0] for k in job["metrics"]}
    with torch.no_grad():
        for i in range(0, len(x), bs):
            out = module(batch_of(job, x, i, bs))
            yb = y[i:i + bs]
            for k, (w, fn, red) in enumerate(job["loss"]):
                sums[k] += fn(out, yb, "sum").item()
            for k, fn in job["metrics"].items():
                s, n = fn(out, yb)
                metric_sums[k][0] += s
                metric_sums[k][1] = None if n is None else metric_sums[k][1] + n
    n = job["count"](y) if "count" in job else len(x)
    loss = sum(w * (s / n if red == "mean" else s) for (w, _, red), s in zip(job["loss"], sums))
    rec = {"eval_loss": loss}
    for k, (s, cnt) in metric_sums.items():
        rec[k] = s if cnt is None else s / cnt
    module.train()
    return rec


def train(job, out):
    module = job["module"]
    opt = job["opt"](module.parameters())
    kind, sargs, every, warmup = job["schedule"]
    x, y = job["train"]
    bs, k = job["batch_size"], job["accumulate"]
    n = len(x)
    starts = list(range(0, n, bs))
    if job["drop_last"] and n % bs:
        starts = starts[:-1]
    step = 0
    module.train()
    for epoch in range(1, job["epochs"] + 1):
        step_losses = []
        for g in range(0, len(starts), k):
            group = starts[g:g + k]
            t = step if every == "step" else epoch - 1
            lr = schedule_lr(kind, job["base_lr"], t, **sargs)
            if warmup:
                lr *= min(1.0, (step + 1) / warmup)
            for pg in opt.param_groups:
                pg["lr"] = lr
            opt.zero_grad()
            micro = []
            for s in group:
                out_b = module(batch_of(job, x, s, bs))
                loss = loss_value(job["loss"], out_b, y[s:s + bs])
                (loss / k).backward()
                micro.append(loss.item())
            if job["clip"] is not None:
                torch.nn.utils.clip_grad_norm_(module.parameters(), job["clip"])
            opt.step()
            step += 1
            logged = sum(micro) / len(micro)
            step_losses.append(logged)
            print(json.dumps({"kind": "step", "epoch": epoch, "step": step, "loss": logged, "lr": lr}), file=out)
        rec = {"kind": "epoch", "epoch": epoch, "train_loss": sum(step_losses) / len(step_losses)}
        rec.update(evaluate(job, module))
        print(json.dumps(rec), file=out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("job", choices=sorted(JOBS))
    ap.add_argument("--init", help="kpc init weights (default tests/golden/torch/JOB.init.safetensors)")
    ap.add_argument("--saved", help="kpc --save output to evaluate with load_state_dict(strict=True)")
    a = ap.parse_args()
    job = JOBS[a.job]()
    init = a.init or ROOT / "tests" / "golden" / "torch" / f"{a.job}.init.safetensors"
    job["module"].load_state_dict(load_file(str(init)), strict=True)
    train(job, sys.stdout)
    if a.saved:
        fresh = JOBS[a.job]()
        fresh["module"].load_state_dict(load_file(a.saved), strict=True)
        rec = {"kind": "saved"}
        rec.update(evaluate(fresh, fresh["module"]))
        print(json.dumps(rec))


if __name__ == "__main__":
    main()
