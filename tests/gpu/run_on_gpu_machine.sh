#!/usr/bin/env bash
# Install FIKIT on a GPU machine without network, run the GPU and CPU suites, then the
# benchmarks: the server's own launch path, forwarding (native vs TCP vs same host, with
# the transport floors, and the cost of each isolation mode), tenant switching, and
# priority scheduling (skipped with FIKIT_SKIP_SCHEDULING=1; its results as
# $OUT/sched.tar.gz). FIKIT_SKIP_CPU_SUITE=1 skips the CPU suite (CI runs it). The
# fault-containment figures go to $OUT/isolation.jsonl. About 7 minutes on an H200.
# Wheels missing there (hatchling and its needs, grpcio-health-checking) are taken from
# .whl/ (see README, "Validating on a GPU box").
# Logs go to $OUT when it is set.
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:-/tmp/fikit-gpu-run}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/fikit-site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/fikit-site PYTHONUNBUFFERED=1 FIKIT_GPU_FIGURES="$out"
python3 -m pip install -q --no-index --no-deps --no-build-isolation . || exit 1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
status=0
python3 -m pytest -v -p no:cacheprovider tests/gpu 2>&1 | tee "$out/pytest-gpu.log" || status=1
if [ "${FIKIT_SKIP_CPU_SUITE:-}" != 1 ]; then
    python3 -m pytest -q -p no:cacheprovider --ignore=tests/gpu tests 2>&1 \
        | tee "$out/pytest.log" || status=1
fi
python3 benchmarks/server_launch_path.py --backend cuda --profile 30 2>&1 | tee "$out/launch_path.log" || status=1
python3 benchmarks/forwarding.py 2>&1 | tee "$out/benchmark.log" || status=1
python3 benchmarks/tenant_switch.py 2>&1 | tee "$out/switch.log" || status=1
if [ "${FIKIT_SKIP_SCHEDULING:-}" != 1 ]; then
    python3 benchmarks/scheduling.py --out /tmp/fikit-sched --alone-rounds 3 2>&1 \
        | tee "$out/sched.log" || status=1
    tar czf "$out/sched.tar.gz" -C /tmp fikit-sched
fi
exit $status
