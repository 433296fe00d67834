#!/usr/bin/env bash
# Start a gpu-server and run the examples through it with fikit-run.
#   bash examples/demo.sh        # backend auto: the GPU of this machine
#   bash examples/demo.sh sim    # the CPU test double (memory is real, kernels do not compute)
set -euo pipefail
cd "$(dirname "$0")/.."
backend=${1:-auto}
address=127.0.0.1:${FIKIT_DEMO_PORT:-50071}
gpu-server --backend "$backend" --listen "$address" &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
python3 - "$address" <<'PY'
import sys, grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
channel = grpc.insecure_channel(sys.argv[1])
stub = health_pb2_grpc.HealthStub(channel)
answer = stub.Check(health_pb2.HealthCheckRequest(), timeout=30, wait_for_ready=True)
assert answer.status == health_pb2.HealthCheckResponse.SERVING
PY
fikit-run --server "$address" python3 examples/device_info.py
if [ "$backend" != sim ]; then
    fikit-run --server "$address" python3 examples/vector_add.py
fi
