from .exact_resume import ExactResumeHook, get_rng_states, set_rng_states
from .hooks import CheckLoadFromHook

__all__ = [
    'CheckLoadFromHook', 'ExactResumeHook', 'get_rng_states', 'set_rng_states'
]
