"""Laine et al. (2019) blind-spot network as a prior for probabilistic Noise2Void.

Four rotations (0/90/180/270) of the input are stacked along the batch and go
through ONE U-Net (weights shared, as in Laine's code) whose receptive field
only extends upward: every 3x3 conv pads 2 rows on top (zero) and none below,
every pooling is preceded by a one-row shift down, upsampling is nearest, and
the U-Net's output is shifted down by one more row. Output at (y, x) of a
branch then depends on rows < y only. The four outputs are rotated back,
concatenated along channels and 1x1 convs give mu and tau (softplus + floor).

Losses (every pixel of every patch):
  nll: -log N(x; mu, tau^2 + v(mu)), everything trained (Laine).
  mse: (x - mu)^2 + the same NLL with mu detached (our package's split).
Noise: v = a*relu(s) + b (poisson_gaussian, input units) or sigma^2 (gaussian);
log-parameterised, initialised by n2v_estimator.nets.noise.estimate_noise, lr x0.1.

    python benchmarks/blind_network_prior.py --check
    python benchmarks/blind_network_prior.py --image camera --noise poisson --loss nll --steps 1500
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from dev_cases import add_noise, load_clean, psnr
from torch import nn

from n2v_estimator.fit.training import warmup_cosine
from n2v_estimator.nets.noise import TAU_FLOOR, estimate_noise


def shift_down(x, n=1):
    """Shift rows down by n (zero rows on top, bottom rows dropped)."""
    return F.pad(x, (0, 0, n, 0))[:, :, : x.shape[2]]


class SConv(nn.Module):
    """3x3 (k x k) conv whose output row y sees input rows y-2r..y (r = k//2)."""

    def __init__(self, c_in, c_out, k=3):
        super().__init__()
        self.r = k // 2
        self.conv = nn.Conv2d(c_in, c_out, k, padding=0)

    def forward(self, x):
        r = self.r
        return self.conv(F.pad(x, (r, r, 2 * r, 0)))


class Block(nn.Sequential):
    def __init__(self, c_in, c_mid, c_out):
        super().__init__(SConv(c_in, c_mid), nn.LeakyReLU(0.1), SConv(c_mid, c_out), nn.LeakyReLU(0.1))


class UpwardUNet(nn.Module):
    """Depth-2 U-Net in our UNet's layout (widths F, 2F; bottom 2F; decoder
    halves), every operation causal upward."""

    def __init__(self, c_in=1, nf=32, depth=2):
        super().__init__()
        width = [nf * 2**level for level in range(depth)]
        self.depth = depth
        self.down = nn.ModuleList()
        c = c_in
        for w in width:
            self.down.append(Block(c, w, w))
            c = w
        self.bottom = Block(c, c, c)
        self.up = nn.ModuleList(
            Block(width[level] * 2, width[level], width[max(0, level - 1)]) for level in reversed(range(depth))
        )
        self.out_channels = width[0]

    def forward(self, x):
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = F.max_pool2d(shift_down(x), 2)
        x = self.bottom(x)
        for block, level in zip(self.up, reversed(range(self.depth))):
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            x = block(torch.cat([x, skips[level]], 1))
        return shift_down(x)


class LaineNet(nn.Module):
    def __init__(self, nf=32, head=96):
        super().__init__()
        self.unet = UpwardUNet(1, nf)
        c = 4 * self.unet.out_channels
        self.head = nn.Sequential(
            nn.Conv2d(c, head, 1), nn.LeakyReLU(0.1), nn.Conv2d(head, head, 1), nn.LeakyReLU(0.1), nn.Conv2d(head, 2, 1)
        )

    def init_tau(self, tau):
        tau = max(float(tau), 2 * TAU_FLOOR) - TAU_FLOOR
        with torch.no_grad():
            self.head[-1].bias[1] = tau + math.log(-math.expm1(-tau))

    def forward(self, x):
        b, _, h, w = x.shape
        assert h == w and h % 4 == 0, "square input, multiple of 4"
        stacked = torch.cat([torch.rot90(x, k, (2, 3)) for k in range(4)], 0)
        out = self.unet(stacked)
        parts = [torch.rot90(o, -k, (2, 3)) for k, o in enumerate(out.split(b, 0))]
        y = self.head(torch.cat(parts, 1))
        mu, s = y[:, :1], y[:, 1:]
        return mu, F.softplus(s) + TAU_FLOOR


class Noise(nn.Module):
    """Noise variance in normalised units of a normalised signal."""

    def __init__(self, kind, values, mean, std):
        super().__init__()
        self.kind, self.mean, self.std = kind, float(mean), float(std)
        if kind == "gaussian":
            self.log_sigma = nn.Parameter(torch.tensor(math.log(float(values["sigma"][0]))))
        else:
            self.log_a = nn.Parameter(torch.tensor(math.log(float(values["a"][0]))))
            self.log_b = nn.Parameter(torch.tensor(math.log(float(values["b"][0]))))

    def variance(self, mu):
        if self.kind == "gaussian":
            return (self.log_sigma.exp() / self.std) ** 2 * torch.ones_like(mu)
        signal = torch.relu(mu * self.std + self.mean)
        return (self.log_a.exp() * signal + self.log_b.exp()) / self.std**2

    def values(self):
        if self.kind == "gaussian":
            return {"sigma": float(self.log_sigma.detach().exp())}
        return {"a": float(self.log_a.detach().exp()), "b": float(self.log_b.detach().exp())}


def nll(mu, tau, x, noise):
    total = tau.square() + noise.variance(mu)
    return (0.5 * (torch.log(total) + (x - mu).square() / total)).mean()


def sample(img, gen, batch, size):
    """Random patches with random dihedral transforms, (B,1,size,size)."""
    h, w = img.shape
    dev = img.device
    oy = torch.randint(0, h - size + 1, (batch,), generator=gen, device=dev)
    ox = torch.randint(0, w - size + 1, (batch,), generator=gen, device=dev)
    ar = torch.arange(size, device=dev)
    p = img[(oy[:, None] + ar)[:, :, None], (ox[:, None] + ar)[:, None, :]][:, None]
    flags = torch.randint(0, 2, (3, batch, 1, 1, 1), generator=gen, device=dev).bool()
    p = torch.where(flags[0], p.flip(-1), p)
    p = torch.where(flags[1], p.flip(-2), p)
    p = torch.where(flags[2], p.transpose(-1, -2), p)
    return p.contiguous()


def evaluate(net, noise, xn, noisy, clean, mean, std):
    net.eval()
    with torch.no_grad():
        mu, tau = net(xn[None, None])
        v = noise.variance(mu)
        post = (v * mu + tau.square() * xn) / (tau.square() + v)
        # Posterior with the TRUE noise parameters (diagnostic only).
        if noise.kind == "gaussian":
            vt = torch.full_like(mu, (25.0 / std) ** 2)
        else:
            vt = (12.75 * torch.relu(mu * std + mean) + 162.5625) / std**2
        post_t = (vt * mu + tau.square() * xn) / (tau.square() + vt)
    net.train()
    to_in = lambda t: t[0, 0].double().cpu().numpy() * std + mean  # noqa: E731
    mu_i, post_i, post_t = to_in(mu), to_in(post), to_in(post_t)
    return {
        "psnr_noisy": round(psnr(noisy, clean), 2),
        "psnr_prior": round(psnr(mu_i, clean), 2),
        "psnr_post": round(psnr(post_i, clean), 2),
        "psnr_post_clip": round(psnr(np.clip(post_i, 0, 255), clean), 2),
        "psnr_post_true_noise": round(psnr(post_t, clean), 2),
        "tau_median_in": round(float(tau.median()) * std, 2),
        "noise": {k: round(v, 3) for k, v in noise.values().items()},
    }


def run(args):
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(args.seed)
    torch.backends.cudnn.benchmark = True
    clean, _ = load_clean(args.image)
    noisy = add_noise(clean, args.noise, seed=args.data_seed)
    mean, std = float(noisy.mean()), float(noisy.std())
    kind = "gaussian" if args.noise == "gauss25" else "poisson_gaussian"
    init = estimate_noise(noisy[None, None], kind)
    net = LaineNet(args.filters, args.head).to(device)
    noise = Noise(kind, init, mean, std).to(device)
    typical = float(noise.variance(torch.zeros(1, device=device)).sqrt().detach())
    net.init_tau(0.25 * typical)
    n_params = sum(p.numel() for p in net.parameters())
    xn = torch.tensor((noisy - mean) / std, dtype=torch.float32, device=device)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    opt = torch.optim.Adam(
        [{"params": net.parameters(), "lr": args.lr}, {"params": noise.parameters(), "lr": args.lr * args.noise_lr}],
        lr=args.lr,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(args.steps))
    base = {
        "image": args.image,
        "noise_kind": args.noise,
        "loss": args.loss,
        "filters": args.filters,
        "lr": args.lr,
        "noise_lr": args.noise_lr,
        "params": n_params,
        "seed": args.seed,
        "device": str(device),
        "noise_init": {k: round(float(v[0]), 3) for k, v in init.items()},
    }
    start = time.perf_counter()
    eval_at = set(args.eval_at) | {args.steps}
    losses = []
    for step in range(1, args.steps + 1):
        x = sample(xn, gen, args.batch, args.patch)
        mu, tau = net(x)
        if args.loss == "nll":
            loss = nll(mu, tau, x, noise)
        else:
            loss = (x - mu).square().mean() + nll(mu.detach(), tau, x, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0:
            losses.append(round(float(loss), 4))
        over = args.deadline and time.perf_counter() - start > args.deadline
        if step in eval_at or over:
            res = {
                **base,
                "steps": step,
                "seconds": round(time.perf_counter() - start, 1),
                **evaluate(net, noise, xn, noisy, clean, mean, std),
                "loss_every100": losses[-5:],
            }
            if over:
                res["stopped_by_deadline"] = True
            line = json.dumps(res)
            print(line, flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(line + "\n")
            if over:
                break


def check_blindness():
    """Float64, CPU: output at p is bitwise unchanged when input p changes; neighbours change."""
    torch.manual_seed(0)
    net = LaineNet(8, 16).double().eval()
    x = torch.randn(1, 1, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        mu0, tau0 = net(x)
    ok = True
    report = []
    for p in [(0, 0), (5, 7), (16, 16), (31, 31), (0, 20), (13, 31), (17, 2)]:
        x1 = x.clone()
        x1[0, 0, p[0], p[1]] += 10.0
        with torch.no_grad():
            mu1, tau1 = net(x1)
        same = bool(mu1[0, 0, p[0], p[1]] == mu0[0, 0, p[0], p[1]]) and bool(
            tau1[0, 0, p[0], p[1]] == tau0[0, 0, p[0], p[1]]
        )
        changed = (mu1 != mu0)[0, 0]
        nbrs = [
            (p[0] + dy, p[1] + dx)
            for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1))
            if 0 <= p[0] + dy < 32 and 0 <= p[1] + dx < 32
        ]
        nb_changed = all(bool(changed[q]) for q in nbrs)
        ok &= same and nb_changed
        report.append(
            {
                "pixel": p,
                "centre_bitwise_unchanged": same,
                "4_neighbours_changed": nb_changed,
                "pixels_changed": int(changed.sum()),
            }
        )
    # Gradient (receptive field) check: d mu(p) / d x is zero exactly at p, nonzero around it.
    xg = x.clone().requires_grad_(True)
    mu, _ = net(xg)
    mu[0, 0, 16, 16].backward()
    g = xg.grad[0, 0]
    rf = {"grad_at_p": float(g[16, 16]), "nonzero_in_5x5": int((g[14:19, 14:19] != 0).sum()), "of": 24}
    ok &= rf["grad_at_p"] == 0.0 and rf["nonzero_in_5x5"] == 24
    # Same in float32 on the trained-size net.
    net32 = LaineNet(32, 96).eval()
    x32 = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        a, _ = net32(x32)
        x32b = x32.clone()
        x32b[:, 0, 30, 33] -= 5
        b, _ = net32(x32b)
    f32 = {
        "max_abs_change_at_p_float32": float((a - b)[:, 0, 30, 33].abs().max()),
        "max_abs_change_anywhere": float((a - b).abs().max()),
    }
    print(json.dumps({"blind": ok, "per_pixel": report, "receptive_field": rf, **f32}))
    n_laine = sum(p.numel() for p in LaineNet(32, 96).parameters())
    from n2v_estimator.nets.unet import UNet

    n_unet = sum(p.numel() for p in UNet(2, 1, 2, 32).parameters())
    n_unet_p = sum(p.numel() for p in UNet(2, 1, 2, 32, noise_model="poisson_gaussian").parameters())
    print(
        json.dumps(
            {
                "params_laine_32_head96": n_laine,
                "params_laine_unet_only": sum(p.numel() for p in LaineNet(32, 96).unet.parameters()),
                "params_our_unet_d2_f32": n_unet,
                "params_our_prob_unet": n_unet_p,
            }
        )
    )
    return ok


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--image", default="camera")
    ap.add_argument("--noise", default="poisson")
    ap.add_argument("--loss", default="nll", choices=["nll", "mse"])
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--filters", type=int, default=32)
    ap.add_argument("--head", type=int, default=96)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--noise-lr", type=float, default=0.1, help="noise params' lr relative to the net's")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--eval-at", type=int, nargs="*", default=[])
    ap.add_argument("--deadline", type=float, default=0)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.check:
        raise SystemExit(0 if check_blindness() else 1)
    run(args)


if __name__ == "__main__":
    main()
