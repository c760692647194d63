"""tomerge: importance-based token merging for diffusers pipelines (ICCV 2025).

import tomerge_cli
tomerge_cli.apply_patch(pipe, ratio=0.5, mode="importance")  # same shape as tomesd
image = pipe(prompt, guidance_scale=7.5).images[0]
tomerge_cli.remove_patch(pipe)
"""

from shared.lazy import lazy_exports

__all__ = ["apply_patch", "get_merger", "remove_patch"]
__getattr__ = lazy_exports(__name__, {name: f"tomerge_cli.patch:{name}" for name in __all__})
