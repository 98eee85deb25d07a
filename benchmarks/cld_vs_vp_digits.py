"""CLD against VP on the embedded digits: bits/dim (bound) and sample quality at equal NFE.

    python -m benchmarks.cld_vs_vp_digits --vp_workdir=runs/digits_vp --cld_workdir=runs/digits_cld \
        --out=runs/cld_vs_vp [--part=likelihood|samples|all] [--model=vp|cld|both] [--nfe=50,100]

Both checkpoints are read only (the latest step of each); every output goes under --out.
  * likelihood: VP gives log p(x) through the probability-flow ODE, CLD the paper's ELBO over v0
    (`likelihood.augmented_elbo`), both in bits/dim on the test split with the configs' settings
    (`configs/digits_vp.py`, `configs/digits_cld.py`: Hutchinson, tsit5, rtol = atol = 1e-5).
  * samples at equal NFE (score evaluations): VP Euler-Maruyama with N - 1 steps + Tweedie
    denoising, VP probability-flow ODE (Euler, N - 1 steps + denoising), CLD SSCS with N steps,
    CLD Euler-Maruyama with N steps; quality = the weight-free digits figures of
    `score_sde.quality` (Frechet distance in the classifier's feature space, lower is better;
    the test split's own value is the floor).
Writes <out>/<model>_likelihood.json, <out>/samples.json and one PNG grid per sampler.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

from configs import digits_cld, digits_vp
from score_sde import data
from score_sde.drivers import evaluate


def samplers_at(model: str, nfe: int) -> dict[str, tuple[str, dict]]:
    """label -> (sampler name, options) with exactly `nfe` score evaluations."""
    if model == "vp":
        return {f"vp_em_{nfe}": ("euler_maruyama", dict(n_steps=nfe - 1, denoise=True)),
                f"vp_ode_euler_{nfe}": ("ode", dict(solver="euler", n_steps=nfe - 1, denoise=True))}
    return {f"cld_sscs_{nfe}": ("sscs", dict(n_steps=nfe)),
            f"cld_em_{nfe}": ("euler_maruyama", dict(n_steps=nfe, denoise=False))}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vp_workdir", required=True)
    p.add_argument("--cld_workdir", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--part", default="all", choices=("likelihood", "samples", "all"))
    p.add_argument("--model", default="both", choices=("vp", "cld", "both"))
    p.add_argument("--nfe", default="50,100")
    p.add_argument("--num_samples", type=int, default=512)
    p.add_argument("--likelihood_examples", type=int, default=300)
    p.add_argument("--seed", type=int, default=None, help="sampling seed (default: the config's); "
                   "another seed labels its results <label>_seed<seed>")
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    runs = {"vp": (digits_vp.get_config(), args.vp_workdir), "cld": (digits_cld.get_config(), args.cld_workdir)}
    models = ("vp", "cld") if args.model == "both" else (args.model,)
    test = data.load_split(runs["vp"][0], "test")
    train_split = data.load_split(runs["vp"][0], "train")
    sample_path = os.path.join(args.out, "samples.json")
    results = json.load(open(sample_path)) if os.path.exists(sample_path) else {}
    for m in models:
        config, workdir = runs[m]
        loaded = evaluate.load_score_fn(config, workdir, test.data_shape)
        if args.part in ("likelihood", "all"):
            config.likelihood.num_examples = args.likelihood_examples
            res = evaluate.likelihood_bpd(config, workdir, test, out_dir=os.path.join(args.out, f"{m}_likelihood"),
                                          loaded=loaded)
            res["bound"] = "ELBO over v0" if m == "cld" else "exact (ODE)"
            print(m, "bits/dim", json.dumps(res))
            with open(os.path.join(args.out, f"{m}_likelihood.json"), "w") as f:
                json.dump(res, f, indent=2)
        if args.part in ("samples", "all"):
            for nfe in (int(n) for n in args.nfe.split(",")):
                for label, (name, opts) in samplers_at(m, nfe).items():
                    config.sampling.method = name
                    config.sampling[name].update(opts)
                    seed = config.seed if args.seed is None else args.seed
                    label = label if args.seed is None else f"{label}_seed{seed}"
                    draws = list(evaluate.draw_batches(config, loaded, args.num_samples, 256, seed))
                    samples = np.concatenate([x for x, _ in draws])
                    q = evaluate.digits_quality_of(config, args.out, samples, train_split, test)
                    q.update(nfe=max(n for _, n in draws), step=int(loaded.step))
                    evaluate.save_grid(samples[:64], config.data.centered, os.path.join(args.out, label + ".png"))
                    results[label] = q
                    print(label, json.dumps(q))
                    with open(sample_path, "w") as f:
                        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
