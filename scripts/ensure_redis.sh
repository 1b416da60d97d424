#!/usr/bin/env bash
# Make sure a Redis server answers on RLAIF_REDIS_PORT (default 6379): start one, installing it with apt if absent.
set -euo pipefail
PORT=${RLAIF_REDIS_PORT:-6379}

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; }

if listening; then
  exit 0
fi
if ! command -v redis-server >/dev/null 2>&1; then
  echo "[setup] redis-server not found: installing it with apt" >&2
  SUDO=""; [[ $(id -u) != 0 ]] && SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq redis-server >/dev/null
fi
echo "[setup] starting redis-server on 127.0.0.1:$PORT" >&2
mkdir -p "${TMPDIR:-/tmp}/rlaif-redis"
redis-server --daemonize yes --bind 127.0.0.1 --port "$PORT" --save "" --appendonly no \
  --dir "${TMPDIR:-/tmp}/rlaif-redis" --logfile "${TMPDIR:-/tmp}/rlaif-redis/redis.log"
for _ in $(seq 50); do listening && exit 0; sleep 0.1; done
echo "[setup] redis-server did not start; see ${TMPDIR:-/tmp}/rlaif-redis/redis.log" >&2
exit 1
