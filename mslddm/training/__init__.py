"""Training support shared by ``train/train_vae.py`` and ``train/train_msldm.py`` (see docs/training.md).

- ``losses``: multi-scale mel, feature matching, least-squares GAN, EDM loss, SI-SDR.
- ``discriminator``: multi-period + multi-resolution complex-STFT discriminator for the SourceVAE.
- ``checkpointing``: atomic ``checkpoint-N`` folders, rotation, resume, pipeline export with a model card.
- ``seeding``: per-step seeds for data and noise (exact resume).
- ``recipes``: recipe files and ``--set`` overrides; ``runner``: command line and Accelerator set-up.
"""
