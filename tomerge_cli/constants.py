"""The values tomerge's options may take, shared by the algorithm modules and `api.py`.

No torch here: `tomerge --help` imports this module (through api.py) and must stay quick.
"""

MAX_RATIO = 0.75  # at most 3 of 4 tokens can go: a quarter of them are destinations
MODES = ("importance", "tome", "none")  # the paper's method, the ToMe baseline, a control
DOWNSAMPLES = (1, 2, 4, 8)  # max_downsample: how much coarser than full resolution
IMPORTANCE = ("cfg", "step-delta", "auto")  # the importance signals (see tomerge_cli.dit)
