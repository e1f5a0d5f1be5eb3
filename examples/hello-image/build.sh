#!/usr/bin/env bash
# Builds the image of examples/hello-image/service.yaml from a built `hello-image` binary:
# the binary and the shared libraries `ldd` lists, under a `FROM scratch` image.
#   BIN     the binary (default: target/release/hello-image, else target/debug/hello-image)
#   IMAGE   the tag (default: dev.local/hello:local)
#   ENGINE  podman or docker (default: podman if on PATH, else docker)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$here/../.."
bin="${BIN:-}"
if [ -z "$bin" ]; then
  for b in "$root/target/release/hello-image" "$root/target/debug/hello-image"; do
    if [ -x "$b" ]; then bin="$b"; break; fi
  done
fi
[ -n "$bin" ] || { echo "build.sh: no hello-image binary; run: cargo build --release -p examples" >&2; exit 1; }
image="${IMAGE:-dev.local/hello:local}"
engine="${ENGINE:-$(command -v podman >/dev/null && echo podman || echo docker)}"
ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/rootfs"
cp "$bin" "$ctx/rootfs/hello-image"
# Every absolute path ldd prints (libraries and the dynamic loader), at the same path.
for lib in $(ldd "$bin" | grep -o '/[^ ]*'); do
  mkdir -p "$ctx/rootfs$(dirname "$lib")"
  cp -L "$lib" "$ctx/rootfs$lib"
done
cp "$here/Containerfile" "$ctx/Containerfile"
"$engine" build -q -t "$image" -f "$ctx/Containerfile" "$ctx"
