"""SafeSpot: preemptive robustness via safe spots (the method, in plain PyTorch).

    from safespot import SearchConfig, find_safe_spots
    cfg = SearchConfig.preset("standard", norm="linf", eps=8/255)
    res = find_safe_spots(model, x, cfg)   # x: (N, C, H, W) 8-bit values in [0,1]
    res.x_safe, res.found, res.grad_evals

This package does no I/O and imports only torch and numpy (scipy for
certification), so training, evaluation, notebooks and the worker share it.
"""

from safespot.config import PRESETS, SearchConfig
from safespot.search import ImageResult, SafeSpotSearch, SearchResult, find_safe_spots
from safespot.slots import SlotProgress, SlotState

__all__ = [
    "PRESETS",
    "ImageResult",
    "SafeSpotSearch",
    "SearchConfig",
    "SearchResult",
    "SlotProgress",
    "SlotState",
    "find_safe_spots",
]
