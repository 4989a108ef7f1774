"""How many CPU threads torch uses: one rule for every command.

``num_threads`` (a key of every command's config) sets torch's intra-op threads; 0 keeps torch's
default, one per physical core. The default degrades gracefully because of what
``import robopolicy`` does first: it sets ``OMP_WAIT_POLICY=PASSIVE`` (unless the user set it),
so OpenMP threads that wait for work sleep instead of spinning. Measured on a 2-core machine
(``scripts/thread_speed.py``, docs/benchmarks/sim.md): with spinning threads, one other busy
process cut BC training from 14.5k to 0.7k samples/s and eval from 0.5 to 6.8 ms per action;
with sleeping ones training keeps 7.0k of its idle 12.8k samples/s.
"""

from __future__ import annotations


def set_num_threads(num_threads: int) -> int:
    """Apply a config's ``num_threads`` (0: torch's default) and return the count in force.
    torch is imported here, not at the top: the CLI imports this module to build its parser."""
    import torch

    if num_threads < 0:
        from robopolicy.config import ConfigError

        raise ConfigError(f"num_threads must be >= 0 (0: torch's default), got {num_threads}")
    if num_threads > 0:
        torch.set_num_threads(num_threads)
    return torch.get_num_threads()
