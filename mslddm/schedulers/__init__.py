from .scheduling_edm import (
    SAMPLERS,
    EDMScheduler,
    SamplingPlan,
    edm_loss_weight,
    edm_scalings,
    get_sigmas_karras,
    sample_training_sigmas,
)
from .sampling import (
    SAMPLER_DEFAULTS,
    SAMPLER_FUNCTIONS,
    Denoiser,
    SamplingSettings,
    sample_dpmpp_2m,
    sample_euler,
    sample_heun,
)
