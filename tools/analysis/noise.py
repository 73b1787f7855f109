"""Noise and key/value misalignment at initialisation: simulation against the analytic forms.

Reproduces the paper's Figure 1 (docs/PAPER_NOTES.md section 1, "Theory") with the detector's own
:class:`~detector.models.indirect_attention.IndirectAttention` module, one head, PyTorch's default
(random) initialisation of the query/key projections, an orthogonal value projection ``W_v``, zero
projection biases and an identity output projection, so that ``o_i = sum_j a_ij v_j`` exactly.

Setting (all per-coordinate variances are 1):

* ``n`` context tokens ``x_j ~ N(mu_x, I_d)`` (the aligned sequence: keys *and* values from it),
  ``y_j ~ N(mu_y, I_d)`` (a different sequence; misaligned attention takes its values from here),
  ``eps_j ~ N(0, I_d)``; ``mu_x = 0`` and ``mu_y = shift * u`` with ``u`` a random unit vector, so
  ``||mu_y - mu_x|| = shift``.
* Object queries ``q ~ N(0, I_d)``; weights ``a_ij = softmax_j(q_i W_q . x_j W_k / sqrt(d))``.

Quantities (expectations over models, token sets and queries):

* ``S2 = E[sum_j a_ij^2]``.
* (a) additive noise: ``o_clean = attn(q, X, X)``, ``o_noisy = attn(q, X, X + sigma * eps)``.
  Theory: ``E||o_noisy - o_clean||^2 = sigma^2 d S2`` (exact: the noise is independent of the weights
  and ``W_v`` preserves norms); ``SNR = E||o_clean||^2 / E||o_noisy - o_clean||^2 ~ 1/sigma^2``
  (the paper's form; it takes ``E||o_clean||^2 = d S2``, which ignores that the weights prefer tokens
  with a large key score -- an O(1) extra signal energy, visible only at small ``d``).
* (b) misalignment: ``o_mis = attn(q, X, Y)`` (keys from X, values from Y), error against the aligned
  output ``o_clean``. Per token the effective noise ``y_j - x_j`` has energy
  ``gamma = E||v^Y_j - v^X_j||^2 = ||mu_y - mu_x||^2 + 2d`` (exact). At the output, with weights
  treated as independent of the values, ``E||o_mis - o_clean||^2 = shift^2 + 2 d S2`` and
  ``SNR_mis = d S2 / (shift^2 + 2 d S2)``.

Run ``python tools/analysis/noise.py --out docs/figures`` to write ``noise_misalignment.png`` and
``noise_misalignment.json``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass

import torch

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

from detector.models.indirect_attention import IndirectAttention  # noqa: E402


@dataclass
class NoiseStats:
    """Simulated expectations for one embedding dimension ``d`` (see the module docstring)."""

    d: int
    num_tokens: int
    samples: int              # object-query outputs averaged over
    sum_a2: float             # S2 = E[sum_j a_j^2]
    signal: float             # E||o_clean||^2
    unit_noise: float         # E||o_noisy - o_clean||^2 / sigma^2 (the error is linear in sigma)
    mis_error: dict           # shift -> E||o_mis - o_clean||^2
    gamma: dict               # shift -> E||v^Y_j - v^X_j||^2

    def snr_additive(self, sigma: float) -> float:
        """Simulated output SNR under additive value noise of standard deviation ``sigma``."""
        return self.signal / (sigma ** 2 * self.unit_noise)

    def snr_misaligned(self, shift: float) -> float:
        """Simulated output SNR under misalignment with mean shift ``shift``."""
        return self.signal / self.mis_error[shift]


def theory_noise_energy(sigma: float, d: int, sum_a2: float) -> float:
    """``E||o_noisy - o_clean||^2 = sigma^2 d sum_i a_i^2``."""
    return sigma ** 2 * d * sum_a2


def theory_snr_additive(sigma: float) -> float:
    """The paper's SNR under additive noise, ``1 / sigma^2`` (independent of ``d``)."""
    return 1.0 / sigma ** 2


def theory_gamma(shift: float, d: int) -> float:
    """Effective noise energy of misalignment per token, ``||mu_y - mu_x||^2 + 2d``."""
    return shift ** 2 + 2.0 * d


def theory_misaligned_error(shift: float, d: int, sum_a2: float) -> float:
    """``E||o_mis - o_clean||^2 = ||mu_y - mu_x||^2 + 2 d sum_i a_i^2`` (weights independent of values)."""
    return shift ** 2 + 2.0 * d * sum_a2


def theory_snr_misaligned(shift: float, d: int, sum_a2: float) -> float:
    """``d S2 / (||mu_y - mu_x||^2 + 2 d S2)``: below 1/2 for every ``d`` and shift."""
    return d * sum_a2 / theory_misaligned_error(shift, d, sum_a2)


def random_orthogonal(d: int, generator: torch.Generator) -> torch.Tensor:
    """A Haar-random ``d x d`` orthogonal matrix (QR of a Gaussian with the sign fix)."""
    g = torch.randn(d, d, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(g)
    return q * torch.sign(torch.diagonal(r))[None, :]


def init_attention(d: int, generator: torch.Generator) -> IndirectAttention:
    """One-head ``IndirectAttention`` at random init with orthogonal ``W_v`` and ``o = sum a v``."""
    module = IndirectAttention(d, 1).double()
    bound = 1.0 / math.sqrt(d)  # nn.Linear's default (kaiming-uniform, a=sqrt(5)) range, seeded here
    with torch.no_grad():
        for lin in (module.q_proj, module.k_proj):
            lin.weight.uniform_(-bound, bound, generator=generator)
            lin.bias.zero_()
        module.v_proj.weight.copy_(random_orthogonal(d, generator))
        module.v_proj.bias.zero_()
        module.out_proj.weight.copy_(torch.eye(d, dtype=torch.float64))
        module.out_proj.bias.zero_()
    return module


def attention_weights(module: IndirectAttention, queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Weights ``[B, Q, n]`` of a one-head module (computed from its projections)."""
    q = module.q_proj(queries)
    k = module.k_proj(keys)
    return torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)


@torch.no_grad()
def simulate(d: int, shifts=(0.0, 4.0, 8.0, 16.0), num_tokens: int = 16, num_models: int = 8,
             num_sets: int = 64, num_queries: int = 8, seed: int = 0, extra_shift_per_dim: bool = True) -> NoiseStats:
    """Monte-Carlo expectations for dimension ``d``.

    Args:
        d: embedding dimension.
        shifts: mean shifts ``||mu_y - mu_x||`` for the misaligned values.
        num_tokens: context length ``n``.
        num_models: independent random initialisations.
        num_sets: token sets per model (the batch).
        num_queries: object queries per token set.
        seed: base seed (the generator is seeded with ``(seed, d)``).
        extra_shift_per_dim: also simulate the shift ``sqrt(d)`` (a unit shift per coordinate).

    Returns:
        :class:`NoiseStats`.
    """
    gen = torch.Generator().manual_seed(seed * 100003 + d)
    shifts = list(dict.fromkeys(list(shifts) + ([math.sqrt(d)] if extra_shift_per_dim else [])))
    acc = {"sum_a2": 0.0, "signal": 0.0, "unit_noise": 0.0}
    mis = {s: 0.0 for s in shifts}
    gam = {s: 0.0 for s in shifts}
    count = 0
    tokens_count = 0
    for _ in range(num_models):
        module = init_attention(d, gen)
        u = torch.randn(d, generator=gen, dtype=torch.float64)
        u = u / u.norm()
        shape = (num_sets, num_tokens, d)
        x = torch.randn(shape, generator=gen, dtype=torch.float64)
        eps = torch.randn(shape, generator=gen, dtype=torch.float64)
        z = torch.randn(shape, generator=gen, dtype=torch.float64)  # y = mu_y + z
        queries = torch.randn(num_sets, num_queries, d, generator=gen, dtype=torch.float64)
        a = attention_weights(module, queries, x)
        o_clean = module(queries, x, x)
        o_noise = module(queries, x, eps)  # o(x + sigma eps) - o(x) = sigma * o(eps): values enter linearly
        acc["sum_a2"] += (a ** 2).sum(-1).sum().item()
        acc["signal"] += (o_clean ** 2).sum(-1).sum().item()
        acc["unit_noise"] += (o_noise ** 2).sum(-1).sum().item()
        v_x = module.v_proj(x)
        for s in shifts:
            y = z + s * u
            o_mis = module(queries, x, y)
            mis[s] += ((o_mis - o_clean) ** 2).sum(-1).sum().item()
            gam[s] += ((module.v_proj(y) - v_x) ** 2).sum(-1).sum().item()
        count += num_sets * num_queries
        tokens_count += num_sets * num_tokens
    return NoiseStats(d=d, num_tokens=num_tokens, samples=count, sum_a2=acc["sum_a2"] / count,
                      signal=acc["signal"] / count, unit_noise=acc["unit_noise"] / count,
                      mis_error={s: v / count for s, v in mis.items()},
                      gamma={s: v / tokens_count for s, v in gam.items()})


def _db(x):
    return 10.0 * math.log10(x)


def make_figure(stats: list[NoiseStats], sigmas, shifts, path: str) -> None:
    """Four panels: SNR under additive noise, SNR under misalignment, gamma vs d, gamma vs shift."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dims = [s.d for s in stats]
    fig, axes = plt.subplots(1, 4, figsize=(19, 4.3))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]

    ax = axes[0]
    for c, sigma in zip(colors, sigmas):
        ax.plot(dims, [_db(s.snr_additive(sigma)) for s in stats], "o", color=c, label=f"sim, sigma={sigma:g}")
        ax.plot(dims, [_db(theory_snr_additive(sigma))] * len(dims), "-", color=c, alpha=0.7)
    ax.axhline(0.0, color="k", ls=":", lw=1, label="critical SNR (sigma*=1)")
    ax.set(xscale="log", xlabel="embedding dimension d", ylabel="output SNR (dB)",
           title="(a) additive noise on values (lines: 1/sigma^2)")
    ax.legend(fontsize=7)

    ax = axes[1]
    curves = [(s, f"||dmu||={s:g}") for s in shifts] + [(None, "||dmu||=sqrt(d) (unit shift/coord)")]
    for c, (shift, label) in zip(colors, curves):
        sim, th = [], []
        for st in stats:
            sh = shift if shift is not None else math.sqrt(st.d)
            sim.append(_db(st.snr_misaligned(sh)))
            th.append(_db(theory_snr_misaligned(sh, st.d, st.sum_a2)))
        ax.plot(dims, sim, "o", color=c, label=f"sim, {label}")
        ax.plot(dims, th, "-", color=c, alpha=0.7)
    ax.axhline(0.0, color="k", ls=":", lw=1, label="critical SNR (sigma*=1)")
    ax.set(xscale="log", xlabel="embedding dimension d", ylabel="output SNR (dB)",
           title="(b) key/value misalignment (lines: theory)")
    ax.legend(fontsize=7)

    ax = axes[2]
    for c, shift in zip(colors, shifts):
        ax.plot(dims, [s.gamma[shift] for s in stats], "o", color=c, label=f"sim, ||dmu||={shift:g}")
        ax.plot(dims, [theory_gamma(shift, s.d) for s in stats], "-", color=c, alpha=0.7)
    ax.plot(dims, [1.0 * s.d for s in stats], "k:", lw=1, label="sigma*^2 d (critical energy)")
    ax.set(xscale="log", yscale="log", xlabel="embedding dimension d", ylabel="gamma = E||v^Y_j - v^X_j||^2",
           title="(c) effective noise energy vs d (lines: ||dmu||^2+2d)")
    ax.legend(fontsize=7)

    ax = axes[3]
    for c, st in zip(colors, [s for s in stats if s.d in (16, 64, 256)] or stats[:3]):
        ax.plot(shifts, [st.gamma[s] for s in shifts], "o", color=c, label=f"sim, d={st.d}")
        fine = torch.linspace(0, max(shifts), 50).tolist()
        ax.plot(fine, [theory_gamma(s, st.d) for s in fine], "-", color=c, alpha=0.7)
    ax.set(yscale="log", xlabel="mean shift ||mu_y - mu_x||", ylabel="gamma",
           title="(d) effective noise energy vs mean shift")
    ax.legend(fontsize=7)

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dims", type=int, nargs="+", default=[8, 16, 32, 64, 128, 256, 512])
    p.add_argument("--sigmas", type=float, nargs="+", default=[0.5, 1.0, 2.0])
    p.add_argument("--shifts", type=float, nargs="+", default=[0.0, 4.0, 8.0, 12.0, 16.0])
    p.add_argument("--tokens", type=int, default=16, help="context length n")
    p.add_argument("--models", type=int, default=8, help="random initialisations per d")
    p.add_argument("--sets", type=int, default=64, help="token sets per initialisation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="docs/figures")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    os.makedirs(args.out, exist_ok=True)
    t0 = time.time()
    stats = [simulate(d, tuple(args.shifts), num_tokens=args.tokens, num_models=args.models,
                      num_sets=args.sets, seed=args.seed) for d in args.dims]
    png = os.path.join(args.out, "noise_misalignment.png")
    make_figure(stats, args.sigmas, args.shifts, png)
    rows = []
    for s in stats:
        row = asdict(s)
        row["mis_error"] = {f"{k:g}": v for k, v in s.mis_error.items()}
        row["gamma"] = {f"{k:g}": v for k, v in s.gamma.items()}
        row["noise_ratio_sim_over_theory"] = s.unit_noise / theory_noise_energy(1.0, s.d, s.sum_a2)
        row["snr_additive_sigma1"] = s.snr_additive(1.0)
        row["snr_misaligned"] = {f"{k:g}": s.snr_misaligned(k) for k in s.mis_error}
        row["snr_misaligned_theory"] = {f"{k:g}": theory_snr_misaligned(k, s.d, s.sum_a2) for k in s.mis_error}
        rows.append(row)
    with open(os.path.join(args.out, "noise_misalignment.json"), "w") as f:
        json.dump({"args": vars(args), "stats": rows}, f, indent=1)
    print(f"{'d':>5} {'S2':>7} {'noise/th':>8} {'SNR(s=1)':>8} " +
          " ".join(f"{'g/th@' + format(k, 'g'):>9}" for k in args.shifts) + " " +
          " ".join(f"{'SNRmis@' + format(k, 'g'):>10}" for k in args.shifts))
    for s in stats:
        print(f"{s.d:>5} {s.sum_a2:7.4f} {s.unit_noise / theory_noise_energy(1, s.d, s.sum_a2):8.4f} "
              f"{s.snr_additive(1.0):8.3f} " +
              " ".join(f"{s.gamma[k] / theory_gamma(k, s.d):9.4f}" for k in args.shifts) + " " +
              " ".join(f"{s.snr_misaligned(k):6.3f}/{theory_snr_misaligned(k, s.d, s.sum_a2):.3f}"
                       for k in args.shifts))
    print(f"wrote {png} in {time.time() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
