from .scheduling_edm import (
    SAMPLERS,
    EDMScheduler,
    EDMSchedulerOutput,
    edm_loss_weight,
    edm_scalings,
    get_sigmas_karras,
    sample_training_sigmas,
)
