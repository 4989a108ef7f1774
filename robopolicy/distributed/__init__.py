"""Scale-out on Ray: the one package that imports ``ray``.

``executor`` maps independent jobs (bench runs, eval shards) to results on this process or on
Ray workers; ``cluster`` starts or joins Ray and checks resource requests; ``sweep`` runs
hyperparameter searches on Ray Tune. Ray is imported inside functions, so a local run never
pays for it and the rest of robopolicy depends only on the config dataclasses here.
"""

from robopolicy.distributed.config import EXECUTORS, RayConfig, check_executor

__all__ = ["EXECUTORS", "RayConfig", "check_executor"]
