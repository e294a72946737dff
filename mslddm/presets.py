"""Named model sizes, as data: ``tiny`` (tests, CI smoke training), ``small`` (CPU-friendly default pipeline),
``small-dac``, ``msldm`` and ``msldm-large`` (the paper's).

Each preset gives the VAE class (``vae_class``, default the paper's DAC-style ``SourceVAE``), the VAE and UNet
constructor arguments (``vae``, ``unet``); the UNet's ``in_channels`` follows from the number of stems and the VAE's
latent channels. ``waveform_unet`` is the size's UNet for MSDM on the stems' waveforms (``in_channels`` = the
number of stems): under ``msldm``, MSDM's own (405,497,700 parameters).

An empty dict means the constructor's defaults: the classes' defaults are the paper's models, so they are written
once, in the constructors. This module imports nothing of mslddm (it is data: models know no named sizes);
:mod:`mslddm.factory` turns a preset into models and pipelines.
"""

from __future__ import annotations

PRESETS = {
    "tiny": {
        "vae": dict(encoder_dim=8, latent_channels=16, decoder_dim=64),
        "unet": dict(channels=32, patch_factor=4, multipliers=(1, 2, 2, 1), factors=(2, 2, 2),
                     num_blocks=(1, 1, 1), attentions=(False, False, True), attention_heads=2,
                     attention_features=16, resnet_groups=8),
        "waveform_unet": dict(channels=32, patch_factor=8, multipliers=(1, 2, 2, 2), factors=(4, 4, 2),
                              num_blocks=(1, 1, 1), attentions=(False, False, True), attention_heads=2,
                              attention_features=16, resnet_groups=8),
    },
    # small: the bundled pipeline's size. The frame-rate SpectralSourceVAE (STFT + ConvNeXt encoder, ConvNeXt +
    # iSTFT decoder, latent 64, 5.7M parameters): every layer runs at 69 frames/s, so on 2 CPU cores a training step
    # costs about half of the DAC-style VAE's and it reconstructs better at equal CPU time (docs/vae_comparison.md).
    # UNet 11.7M parameters (time mapping 256 wide, 128-channel last level): VAE + UNet about 35 MB in fp16.
    "small": {
        "vae_class": "SpectralSourceVAE",
        "vae": dict(latent_channels=64, encoder_dim=256, encoder_blocks=4, decoder_dim=256, decoder_blocks=8,
                    intermediate_multiplier=3),
        "unet": dict(channels=128, patch_factor=8, multipliers=(1, 2, 2, 1, 1), factors=(1, 2, 1, 2),
                     num_blocks=(2, 2, 2, 2), attentions=(False, True, True, True), attention_heads=4,
                     attention_features=32, resnet_groups=8, mapping_features=256),
        # MSDM at CPU size: the paper's level structure at a quarter of the width, four levels (stride 2048).
        "waveform_unet": dict(channels=64, patch_factor=16, multipliers=(1, 2, 4, 4, 4), factors=(4, 4, 4, 2),
                              num_blocks=(2, 2, 2, 2), attentions=(False, False, True, True), attention_heads=4,
                              attention_features=32, resnet_groups=8, mapping_features=256),
    },
    # small-dac: the same UNet on the DAC-style SourceVAE at CPU size (decoder_dim 128: 256 took 3.5-7 s to decode
    # 12 s of 4 stems on 2 cores), 1.5M parameters: the interim bundled pipeline's, kept for the comparison.
    "small-dac": {
        "vae": dict(encoder_dim=16, latent_channels=32, decoder_dim=128),
        "unet": dict(channels=128, patch_factor=8, multipliers=(1, 2, 2, 1, 1), factors=(1, 2, 1, 2),
                     num_blocks=(2, 2, 2, 2), attentions=(False, True, True, True), attention_heads=4,
                     attention_features=32, resnet_groups=8, mapping_features=256),
    },
    # The paper's models (UPSTREAM.md): the SourceVAE's and MultiSourceUNet1DModel's defaults (61,050,402 and, with
    # 4 stems x 80 channels, 364,416,864 parameters); msldm-large's UNet has 441,314,656.
    "msldm": {
        "vae": {},
        "unet": {},
        # MSDM (UPSTREAM.md): 405,497,700 parameters on 4 waveform channels.
        "waveform_unet": dict(channels=256, patch_factor=16, patch_blocks=1, multipliers=[1, 2, 4, 4, 4, 4, 4],
                              factors=[4, 4, 4, 2, 2, 2], num_blocks=[2, 2, 2, 2, 2, 2],
                              attentions=[False, False, False, True, True, True], attention_heads=8,
                              attention_features=128, attention_multiplier=2),
    },
    "msldm-large": {
        "vae": {},
        "unet": dict(channels=512, patch_factor=16, patch_blocks=1, multipliers=[1, 2, 2, 1, 1, 1, 1, 1, 1],
                     factors=[1, 1, 2, 1, 1, 2, 2, 2], num_blocks=[2, 2, 2, 2, 2, 4, 4, 6],
                     attentions=[False, True, True, True, True, True, True, True], attention_heads=12,
                     attention_features=128, attention_multiplier=2),
    },
}
