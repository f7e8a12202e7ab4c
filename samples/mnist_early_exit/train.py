"""Train the multi-exit network: every exit's cross-entropy, plus distillation of the final
exit into the early ones (it makes early exits' confidences more useful for exiting)."""
import time

import numpy as np
import torch
import torch.nn.functional as F


def train(model, x, y, epochs=4, batch_size=64, seed=0, log=print):
    """Train in place on float32 inputs ``x`` (N, 1, 28, 28) and labels ``y``."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    steps = epochs * ((len(x) + batch_size - 1) // batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=4e-3, total_steps=steps)
    start = time.time()
    for epoch in range(epochs):
        model.train()
        perm = torch.from_numpy(rng.permutation(len(x)))
        total = 0.0
        for i in range(0, len(x), batch_size):
            idx = perm[i:i + batch_size]
            # Random shifts of up to 2 pixels: cheap augmentation for a 3000-image training set.
            dx, dy = (int(v) for v in rng.integers(-2, 3, size=2))
            xb = torch.roll(xt[idx], shifts=(dx, dy), dims=(2, 3))
            outs = model(xb)
            loss = sum(F.cross_entropy(o, yt[idx]) for o in outs)
            teacher = F.softmax(outs[-1].detach(), dim=1)
            loss = loss + 0.5 * sum(F.kl_div(F.log_softmax(o, dim=1), teacher, reduction="batchmean")
                                    for o in outs[:-1])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        log("epoch {}/{}: loss {:.3f} ({:.0f}s)".format(epoch + 1, epochs, total / len(x),
                                                       time.time() - start))
    model.eval()
    return model
