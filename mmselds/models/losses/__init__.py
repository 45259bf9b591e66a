from .sparsity_loss import SPARSITY_MODES, SparsityLoss

__all__ = ['SPARSITY_MODES', 'SparsityLoss']
