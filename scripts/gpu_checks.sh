#!/usr/bin/env bash
# The checks that need a CUDA GPU (CI has none): the gpu-marked tests, MuJoCo's EGL frame rate
# and which GL implementation drew the frames, and the bench bc speed table on CUDA.
# Usage: scripts/gpu_checks.sh [OUT_DIR]   (PYTHON=... to pick the interpreter)
set -uo pipefail
out=${1:-runs/gpu_checks}
py=${PYTHON:-python}
mkdir -p "$out"
export MUJOCO_GL=egl PYTHONUNBUFFERED=1

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
$py -m pytest -m gpu -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tail -15 | tee "$out/pytest_gpu.txt"
tests_rc=${PIPESTATUS[0]}
$py - "$out" <<'PY'
import json, sys
import torch
from robopolicy.bench.bc import backbone_speed
from robopolicy.bench.sim import render_rate
from robopolicy.files import atomic_write_json

out = sys.argv[1]
render = {
    env: {size: render_rate(env, size, 300) for size in (84, 256)}
    for env in ("robopolicy/Lift-v0", "robopolicy/PushT-v0", "robopolicy/PickPlace-v0")
}
print(json.dumps(render, indent=1))
device = torch.device("cuda")
speed = backbone_speed(20, 50, device)
print(json.dumps(speed, indent=1))
atomic_write_json(
    f"{out}/gpu_checks.json",
    {"gpu": torch.cuda.get_device_name(device), "render": render, "speed": speed},
)
PY
checks_rc=$?
echo "gpu tests exit $tests_rc, measurements exit $checks_rc; results in $out"
exit $(( tests_rc != 0 ? tests_rc : checks_rc ))
