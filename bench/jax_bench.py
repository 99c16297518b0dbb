#!/usr/bin/env python
"""JAX (XLA CPU) training-throughput anchors for kpc: W1 and W2, jax.jit of
one whole train step (forward, jax.grad backward, hand-written optimizer),
plus a jnp.dot GEMM roofline.

    python bench/jax_bench.py --workload W2 --threads 1 --mode jit

Threads: --threads 1 sets XLA_FLAGS=--xla_cpu_multi_thread_eigen=false
(single-threaded Eigen kernels) before jax is imported and, unless
--no-pin, also pins the process to one CPU so that no XLA thread pool can
use a second core.  --threads 2 leaves XLA's defaults (it sizes its pools
from the 2 schedulable CPUs).

Prints exactly one JSON line on stdout.
"""
import time

T_INTERP = time.time()

import argparse  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workload", required=True, choices=["W1", "W2", "GEMM"])
    p.add_argument("--threads", type=int, default=1, choices=[1, 2])
    p.add_argument("--mode", default="jit", choices=["jit"])
    p.add_argument("--no-pin", action="store_true", help="threads=1: do not pin to one CPU")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--warmup-epochs", type=int, default=1)
    p.add_argument("--min-time", type=float, default=3.0)
    p.add_argument("--min-epochs", type=int, default=1)
    p.add_argument("--max-epochs", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


ARGS = parse_args()
PINNED = None
if ARGS.threads == 1:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               " --xla_cpu_multi_thread_eigen=false").strip()
    if not ARGS.no_pin:
        cpu = sorted(os.sched_getaffinity(0))[-1]
        os.sched_setaffinity(0, {cpu})
        PINNED = cpu
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import common  # noqa: E402

SNAP_START = common.cpu_snapshot()

from functools import partial  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

T_IMPORT = time.time()
RSS_AFTER_IMPORT = common.cur_rss_mb()
tmap = jax.tree_util.tree_map


def init_linear(key, fin, fout):
    """nn.Linear's default init: U(-1/sqrt(fin), 1/sqrt(fin)) for weight and bias."""
    k1, k2 = jax.random.split(key)
    bound = 1.0 / np.sqrt(fin)
    return {"weight": jax.random.uniform(k1, (fout, fin), jnp.float32, -bound, bound),
            "bias": jax.random.uniform(k2, (fout,), jnp.float32, -bound, bound)}


def linear(p, x):  # PyTorch layout: weight [out, in]
    return x @ p["weight"].T + p["bias"]


def cross_entropy(logits, y):
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))


# ---------------------------------------------------------------- W1 -------
def w1_init(key):
    k1, k2 = jax.random.split(key)
    params = {"fc1": init_linear(k1, 64, 128),
              "bn1": {"weight": jnp.ones(128), "bias": jnp.zeros(128)},
              "fc2": init_linear(k2, 128, 10)}
    state = {"running_mean": jnp.zeros(128), "running_var": jnp.ones(128)}
    return params, state


def w1_loss(params, state, x, y, key):
    h = linear(params["fc1"], x)
    n = x.shape[0]
    mu = h.mean(0)
    var = h.var(0)  # biased, used for normalization (train mode)
    h = (h - mu) * jax.lax.rsqrt(var + 1e-5) * params["bn1"]["weight"] + params["bn1"]["bias"]
    h = jax.nn.relu(h)
    keep = jax.random.bernoulli(key, 0.8, h.shape)  # dropout p = 0.2
    h = jnp.where(keep, h / 0.8, 0.0)
    loss = cross_entropy(linear(params["fc2"], h), y)
    mu, var = jax.lax.stop_gradient(mu), jax.lax.stop_gradient(var)
    new_state = {"running_mean": 0.9 * state["running_mean"] + 0.1 * mu,
                 "running_var": 0.9 * state["running_var"] + 0.1 * var * (n / (n - 1))}
    return loss, new_state


@partial(jax.jit, donate_argnums=(0, 1, 2, 3))
def w1_step(params, mom, state, key, x, y):
    """SGD(lr=0.1, momentum=0.9), PyTorch rule: buf = 0.9*buf + g; p -= lr*buf
    (a zero-initialised buffer gives buf = g on the first step, as PyTorch)."""
    key, sub = jax.random.split(key)
    (loss, state), g = jax.value_and_grad(w1_loss, has_aux=True)(params, state, x, y, sub)
    mom = tmap(lambda m, gg: 0.9 * m + gg, mom, g)
    params = tmap(lambda p, m: p - 0.1 * m, params, mom)
    return params, mom, state, key, loss


# ---------------------------------------------------------------- W2 -------
def w2_init(key):
    k1, k2, k3 = jax.random.split(key, 3)
    return {"fc1": init_linear(k1, 784, 1024), "fc2": init_linear(k2, 1024, 1024),
            "fc3": init_linear(k3, 1024, 10)}


def w2_loss(params, x, y):
    h = jax.nn.relu(linear(params["fc1"], x))
    h = jax.nn.relu(linear(params["fc2"], h))
    return cross_entropy(linear(params["fc3"], h), y)


@partial(jax.jit, donate_argnums=(0, 1, 2, 3))
def w2_step(params, m, v, t, x, y):
    """Adam(lr=1e-3, betas=(0.9, 0.999), eps=1e-8), PyTorch's update rule."""
    lr, b1, b2, eps = 1e-3, 0.9, 0.999, 1e-8
    loss, g = jax.value_and_grad(w2_loss)(params, x, y)
    t = t + 1.0
    m = tmap(lambda mm, gg: b1 * mm + (1 - b1) * gg, m, g)
    v = tmap(lambda vv, gg: b2 * vv + (1 - b2) * gg * gg, v, g)
    bc1 = 1 - b1 ** t
    bc2 = 1 - b2 ** t
    params = tmap(lambda p, mm, vv: p - (lr / bc1) * mm / (jnp.sqrt(vv) / jnp.sqrt(bc2) + eps),
                  params, m, v)
    return params, m, v, t, loss


def run_training():
    data_dir = ARGS.data_dir or str(common.DEFAULT_DATA_DIR)
    t0 = time.time()
    if ARGS.workload == "W1":
        raw, info = common.load_digits(data_dir, 64, ARGS.seed)
    else:
        raw, info = common.load_synthetic(8192, 784, 10, 128, ARGS.seed)
    batches = [(jnp.asarray(x), jnp.asarray(y.astype(np.int32))) for x, y in raw]
    jax.block_until_ready(batches)
    t_data = time.time() - t0

    key = jax.random.PRNGKey(ARGS.seed)
    key, k_init = jax.random.split(key)
    if ARGS.workload == "W1":
        params, state = w1_init(k_init)
        carry = [params, tmap(jnp.zeros_like, params), state, key]
        step_fn = w1_step
    else:
        params = w2_init(k_init)
        carry = [params, tmap(jnp.zeros_like, params), tmap(jnp.zeros_like, params),
                 jnp.zeros((), jnp.float32)]
        step_fn = w2_step
    info["params"] = int(sum(p.size for p in jax.tree_util.tree_leaves(params)))
    info["batches_per_epoch"] = len(batches)
    samples_per_epoch = sum(int(b[0].shape[0]) for b in batches)

    def train_step(b):
        nonlocal carry
        *carry, loss = step_fn(*carry, *b)
        return loss

    t = time.perf_counter()
    first_loss = float(jax.block_until_ready(train_step(batches[0])))
    first_step_s = time.perf_counter() - t
    ttfs, ttfs_src = common.ttfs_now()
    t_first_end = time.time()

    t = time.perf_counter()
    for _ in range(ARGS.warmup_epochs):
        for b in batches:
            loss = train_step(b)
    jax.block_until_ready(loss)
    warmup_s = time.perf_counter() - t

    epoch_times, epoch_losses = [], []
    snap0 = common.cpu_snapshot()
    cpu0 = time.process_time()
    while True:
        losses = []
        t = time.perf_counter()
        for b in batches:
            losses.append(train_step(b))
        mean_loss = float(jnp.mean(jnp.stack(losses)))  # waits for the whole epoch
        epoch_times.append(time.perf_counter() - t)
        epoch_losses.append(mean_loss)
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
        "first_step_s": first_step_s,
        "warmup_s": warmup_s,
        "startup_overhead_s": first_step_s + warmup_s - warm_samples / res["samples_per_s"],
        "loss_first_step": first_loss,
        "loss_first_timed_epoch": epoch_losses[0],
        "loss_last_timed_epoch": epoch_losses[-1],
        "samples_per_epoch": samples_per_epoch,
        "data": info,
        "timed_load": common.background_load(snap0, snap1),
    })
    res["compile_s"] = res["startup_overhead_s"]
    return res


def run_gemm():
    out = {}
    rng = np.random.default_rng(0)
    mm = jax.jit(jnp.dot)
    for name, (M, K, N) in [("dot_128x784x1024", (128, 784, 1024)),
                            ("dot_1024x1024x1024", (1024, 1024, 1024))]:
        a = jnp.asarray(rng.standard_normal((M, K), dtype=np.float32))
        b = jnp.asarray(rng.standard_normal((K, N), dtype=np.float32))
        for _ in range(5):
            mm(a, b).block_until_ready()
        snap0 = common.cpu_snapshot()
        cpu0 = time.process_time()
        n, t = 0, time.perf_counter()
        while True:
            mm(a, b).block_until_ready()
            n += 1
            dt = time.perf_counter() - t
            if dt >= max(ARGS.min_time / 3, 0.5):
                break
        out[name + "_gflops"] = 2.0 * M * N * K * n / dt / 1e9
        out[name + "_cpu_util"] = (time.process_time() - cpu0) / dt
        out[name + "_load"] = common.background_load(snap0, common.cpu_snapshot())
    return out


def main():
    res = run_gemm() if ARGS.workload == "GEMM" else run_training()
    out = {"bench": "jax", "workload": ARGS.workload, "mode": ARGS.mode, "threads": ARGS.threads}
    out.update(res)
    out.update({
        "whole_load": common.background_load(SNAP_START, common.cpu_snapshot()),
        "peak_rss_mb": common.peak_rss_mb(),
        "rss_after_import_mb": RSS_AFTER_IMPORT,
        "jax": jax.__version__,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "pinned_cpu": PINNED,
        "host": common.host_info(),
    })
    common.emit(out)


if __name__ == "__main__":
    main()
