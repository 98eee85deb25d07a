"""Sampler options in the config: derived from each sampler's constructor, one sub-dict per sampler."""

import pytest

from configs.default import get_default_configs
from score_sde import config_utils, solvers


def test_every_option_of_every_sampler_is_in_the_config_with_its_default():
    """No hand-kept list: `sampling.<name>` holds exactly the sampler's options, and the default
    config builds each sampler equal to its no-argument construction."""
    config = get_default_configs()
    for name in solvers.names():
        preset = {"nfe"} if name in solvers.budget_names() else set()  # the nfe= preset key (None: unset)
        assert set(config.sampling[name].keys()) == set(solvers.options(name)) | preset, name
        config.sampling.method = name
        assert config_utils.sampler_from_config(config.sampling) == solvers.get(name), name


def test_overrides_reach_the_chosen_sampler_and_none_means_its_default():
    config = get_default_configs()
    config.sampling.method = "ode"
    assert config.sampling.ode.n_steps is None  # adaptive
    config.sampling.ode.n_steps = 50
    config.sampling.ode.solver = "heun"
    assert config_utils.sampler_from_config(config.sampling) == solvers.get("ode", n_steps=50, solver="heun")
    config.sampling.method = "pc"
    config.sampling.pc.snr = 0.3
    config.sampling.pc.n_corrector_steps = 2
    sampler = config_utils.sampler_from_config(config.sampling)
    assert sampler.snr == 0.3 and sampler.n_corrector_steps == 2 and sampler.n_steps == 1000
    with pytest.raises(TypeError):
        config.sampling.ode.n_steps = "fifty"  # placeholders keep their option's type


def test_bad_values_and_names_are_clear_errors():
    config = get_default_configs()
    config.sampling.method = "nope"
    with pytest.raises(ValueError, match="valid samplers: ddim, dpm_solver, edm_heun, euler_maruyama, ipndm, ode, pc"):
        config_utils.sampler_from_config(config.sampling)
    config.sampling.method = "dpm_solver"
    config.sampling.dpm_solver.order = 5
    with pytest.raises(ValueError, match="order must be 1, 2 or 3"):
        config_utils.sampler_from_config(config.sampling)


def test_flags_for_another_sampler_are_found():
    argv = ["main.py", "--config.sampling.method=ode", "--config.sampling.pc.snr=0.2",
            "--config.sampling.ode.rtol=1e-3", "--config.sampling.num_samples=4"]
    assert config_utils.sampler_overrides_for_other_samplers(argv, "ode") == ["--config.sampling.pc.snr"]
    assert config_utils.sampler_overrides_for_other_samplers(argv, "pc") == ["--config.sampling.ode.rtol"]


def test_nfe_alone_is_the_library_preset():
    """`sampling.<method>.nfe = 20` with the other options at their defaults builds exactly
    `solvers.get(method, nfe=20)` for every sampler with a preset (which differs from its defaults)."""
    for name in solvers.budget_names():
        config = get_default_configs()
        config.sampling.method = name
        config.sampling[name].nfe = 20
        sampler = config_utils.sampler_from_config(config.sampling)
        assert sampler == solvers.get(name, nfe=20), name
        assert sampler != solvers.get(name), name


def test_nfe_with_other_options():
    """With another option changed, nfe is dpm_solver's own budget option (as in solvers.get) and an
    error naming the conflicting option for the samplers whose preset fixes their options."""
    config = get_default_configs()
    config.sampling.method = "dpm_solver"
    config.sampling.dpm_solver.update(nfe=20, method="singlestep")
    assert config_utils.sampler_from_config(config.sampling) == solvers.get("dpm_solver", nfe=20, method="singlestep")
    config.sampling.method = "unipc"
    config.sampling.unipc.update(nfe=10, order=3)
    with pytest.raises(ValueError, match=r"sampling.unipc.nfe=10 picks unipc's preset .* sampling.unipc.order"):
        config_utils.sampler_from_config(config.sampling)
