from .exact_resume import ExactResumeHook, get_rng_states, set_rng_states
from .hooks import CheckLoadFromHook, resolve_resume

__all__ = [
    'CheckLoadFromHook', 'ExactResumeHook', 'get_rng_states', 'resolve_resume',
    'set_rng_states'
]
