# Runtime settings shared by every selective down-sampling config: hooks
# that make loading strict and resuming exact. Inherit it after mmseg's
# default_runtime.py (a config that sets custom_hooks must keep these).
custom_imports = dict(imports=['mmselds'], allow_failed_imports=False)
custom_hooks = [
    # stop with an error naming mismatched tensors when a checkpoint
    # (load_from, tools/test.py CHECKPOINT) does not fit the model
    dict(type='CheckLoadFromHook'),
    # --resume ends with the weights of the uninterrupted run: random
    # states saved in checkpoints, validation draws no training randomness
    dict(type='ExactResumeHook'),
]
