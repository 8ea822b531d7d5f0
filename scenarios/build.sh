#!/bin/sh
# Builds the C scenarios into $1 (default: scenarios/bin). Thin wrapper over
# the Makefile for callers that prefer a script.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/bin}
mkdir -p "$out"
out=$(cd "$out" && pwd)
exec make -C "$here" OUT="$out" CFLAGS="${CFLAGS:--O2 -g -fno-omit-frame-pointer -Wall -Wextra}"
