"""DDPM++: the NCSN++ class with the DDPM++ settings of Song et al. (ICLR 2021, appendix H).

DDPM++ differs from NCSN++ only in its settings: no FIR resampling, no progressive
input pyramid, and the DDPM positional embedding of the noise level. `DDPMPP_SETTINGS`
are the `cifar10_ddpmpp_continuous` values used for VP and sub-VP (62M parameters in
the paper); `NCSNPP_SETTINGS` those of `cifar10_ncsnpp_continuous` for VE (63M).
"""

from __future__ import annotations

from score_sde.models.ncsnpp import NCSNpp

_CIFAR10_COMMON = dict(nf=128, ch_mult=(1, 2, 2, 2), num_res_blocks=4, attn_resolutions=(16,), dropout=0.1,
                       resblock_type="biggan", fir_kernel=(1, 3, 3, 1), skip_rescale=True, progressive="none",
                       progressive_combine="sum", fourier_scale=16.0, conditional=True, init_scale=0.0)

DDPMPP_SETTINGS = dict(_CIFAR10_COMMON, fir=False, progressive_input="none", embedding_type="positional")
NCSNPP_SETTINGS = dict(_CIFAR10_COMMON, fir=True, progressive_input="residual", embedding_type="fourier")


def ddpmpp(**overrides) -> NCSNpp:
    """An NCSNpp with the DDPM++ cont. CIFAR-10 settings, any field overridden by keyword."""
    return NCSNpp(**{**DDPMPP_SETTINGS, **overrides})


def ncsnpp(**overrides) -> NCSNpp:
    """An NCSNpp with the NCSN++ cont. CIFAR-10 settings, any field overridden by keyword."""
    return NCSNpp(**{**NCSNPP_SETTINGS, **overrides})


__all__ = ["DDPMPP_SETTINGS", "NCSNPP_SETTINGS", "ddpmpp", "ncsnpp"]
