#!/usr/bin/env bash
# Temporary diagnosis: run copies.py remotely several times; dump stacks when one hangs.
set -u
cd "$(dirname "$0")/../.."
export PYTHONFAULTHANDLER=1
gpu-server --backend cuda --listen 127.0.0.1:50200 > $OUT/server.log 2>&1 &
server=$!
sleep 3
for i in 1 2 3; do
  start=$(date +%s)
  timeout -s ABRT 100 fikit-run --server 127.0.0.1:50200 python3 tests/gpu/programs/copies.py > $OUT/copies$i.out 2> $OUT/copies$i.err
  rc=$?
  echo "run $i rc=$rc seconds=$(( $(date +%s) - start ))"
  if [ $rc -ne 0 ]; then kill -USR1 $server; sleep 1; tail -5 $OUT/copies$i.out; tail -60 $OUT/copies$i.err; fi
done
kill $server
tail -120 $OUT/server.log
