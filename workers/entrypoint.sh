#!/usr/bin/env bash
# Container entrypoint of a nepi_dist worker.
#
# With no arguments, or with only options, it runs `nepi-dist worker`, with flags from the
# environment, then the given options:
#   NEPI_DIST_WORKER_HOST=NAME  -> --host NAME      (serve the queue nepi.host.NAME)
#   NEPI_DIST_POOL_QUEUE=1      -> --pool-queue     (with a host, also serve nepi.pool)
#   NEPI_NTHREADS=N             -> --concurrency N
# A worker given no host serves the pool queue.  Any other command (its first argument not an
# option), e.g. `python examples/hello.py` or `nepi-dist workers`, runs as given.
set -euo pipefail

if [[ $# -gt 0 && $1 != -* ]]; then
  exec "$@"
fi

args=(worker)
if [[ -n ${NEPI_DIST_WORKER_HOST:-} ]]; then
  args+=(--host "$NEPI_DIST_WORKER_HOST")
fi
case ${NEPI_DIST_POOL_QUEUE:-} in
  1 | true | yes) args+=(--pool-queue) ;;
  "" | 0 | false | no) ;;
  *)
    echo "entrypoint: NEPI_DIST_POOL_QUEUE must be 1/true/yes or 0/false/no, not '$NEPI_DIST_POOL_QUEUE'" >&2
    exit 2
    ;;
esac
if [[ -n ${NEPI_NTHREADS:-} ]]; then
  if [[ ! $NEPI_NTHREADS =~ ^[1-9][0-9]*$ ]]; then
    echo "entrypoint: NEPI_NTHREADS must be a positive integer, not '$NEPI_NTHREADS'" >&2
    exit 2
  fi
  args+=(--concurrency "$NEPI_NTHREADS")
fi
exec nepi-dist "${args[@]}" "$@"
