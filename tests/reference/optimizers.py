"""Golden optimizer trajectories from PyTorch, for kpc's optimizer-rule tests.

Each case runs a torch.optim optimizer for a few steps on a small parameter tensor with a
fixed sequence of gradients (and, for the clipping case, clip_grad_norm_ first) and records
the parameter values after every step. kpc's tests replay the same gradients through its
update rules and compare (f32, relative 1e-6 + absolute 1e-7).

Run outside CI, on a developer machine with torch installed:
    python tests/reference/optimizers.py > tests/golden/torch/optimizers.jsonl
"""
import json

import torch

torch.set_default_dtype(torch.float32)

P0 = [0.5, -1.25, 2.0, -0.75, 0.0, 3.0]
GRADS = [
    [0.1, -0.2, 0.3, 0.05, -0.4, 1.0],
    [-0.3, 0.25, 0.0, 0.5, 0.1, -0.7],
    [0.2, 0.2, -0.6, -0.1, 0.3, 0.4],
    [0.0, -0.5, 0.45, 0.2, -0.2, -0.3],
    [1.5, 0.1, -0.2, -0.9, 0.6, 0.05],
]
LRS = [0.1, 0.1, 0.05, 0.05, 0.02]  # per step, as a schedule would set them

CASES = [
    ("sgd_plain", "sgd", dict()),
    ("sgd_momentum", "sgd", dict(momentum=0.9)),
    ("sgd_momentum_dampening", "sgd", dict(momentum=0.9, dampening=0.3)),
    ("sgd_nesterov_wd", "sgd", dict(momentum=0.8, nesterov=True, weight_decay=0.01)),
    ("adam_default", "adam", dict()),
    ("adam_amsgrad_wd", "adam", dict(amsgrad=True, weight_decay=0.1, betas=(0.8, 0.9), eps=1e-6)),
    ("adamw_default", "adamw", dict()),
    ("adamw_amsgrad", "adamw", dict(amsgrad=True, weight_decay=0.05)),
    ("rmsprop_default", "rmsprop", dict()),
    ("rmsprop_centered_momentum", "rmsprop", dict(centered=True, momentum=0.5, weight_decay=0.01, alpha=0.9)),
]
CTORS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "rmsprop": torch.optim.RMSprop}


def run(name, opt, kwargs, clip=None):
    p = torch.nn.Parameter(torch.tensor(P0))
    o = CTORS[opt]([p], lr=LRS[0], **kwargs)
    out = []
    for g, lr in zip(GRADS, LRS):
        for group in o.param_groups:
            group["lr"] = lr
        p.grad = torch.tensor(g)
        if clip is not None:
            torch.nn.utils.clip_grad_norm_([p], clip)
        o.step()
        out.append(p.detach().tolist())
    args = {k: (list(v) if isinstance(v, tuple) else v) for k, v in kwargs.items()}
    rec = {"case": name, "optimizer": opt, "args": args, "lrs": LRS, "p0": P0, "grads": GRADS, "params": out}
    if clip is not None:
        rec["clip_grad_norm"] = clip
    print(json.dumps(rec))


for name, opt, kwargs in CASES:
    run(name, opt, kwargs)
run("sgd_momentum_clipped", "sgd", dict(momentum=0.9), clip=0.5)
