"""Forward SDEs and the exact Gaussian-mixture oracle, in a few lines (runs on CPU in seconds).

    python examples/oracle_demo.py
"""

import jax
import jax.numpy as jnp

import score_sde as ss


def main():
    gmm = ss.GaussianMixture(
        weights=jnp.array([0.3, 0.7]), means=jnp.array([[-2.0, 0.0], [2.0, 1.0]]), stds=jnp.array([0.4, 0.6])
    )
    x0 = gmm.sample(jax.random.PRNGKey(0), 5)
    for sde in (ss.VPSDE(), ss.SubVPSDE(), ss.VESDE()):
        t = jnp.full((5,), 0.5)
        mean, std = sde.marginal_prob(x0, t)
        score = gmm.score_fn(sde)(x0, t)
        print(f"{type(sde).__name__:9s} t=0.5: std={float(std[0]):.4f}  "
              f"log p_t(x0)={gmm.marginal_log_prob(sde, x0, t).mean():.3f}  |score|={jnp.linalg.norm(score, axis=1).mean():.3f}")
    print("log p_0 of 5 samples:", jnp.round(gmm.log_prob(x0), 3))


if __name__ == "__main__":
    main()
