"""Code run in subprocesses by the tests that check what imports what:
torch-free strings, so a test can build its script without importing mm*."""

# as if no mm* package were installed: every import of one fails
BLOCK_MM = r'''
import sys

class Block:  # as if no mm* package were installed
    def find_spec(self, name, path=None, target=None):
        top = name.split('.')[0]
        if top in ('mmseg', 'mmcv', 'mmengine'):
            raise ModuleNotFoundError(f'No module named {top!r}', name=top)

sys.meta_path.insert(0, Block())
'''
MM_LOADED = '''
loaded = sorted(m for m in sys.modules
                if m.split('.')[0] in ('mmseg', 'mmcv', 'mmengine'))
assert not loaded, loaded
print('ok')
'''
