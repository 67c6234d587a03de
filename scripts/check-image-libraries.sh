#!/usr/bin/env bash
# No container engine runs here, so deploy/Dockerfile's runtime image is checked the way it can be: every shared
# library the botcluster binary links (ldd) must come from a package the runtime stage installs (its
# RUNTIME-PACKAGES line) or one debian:bookworm-slim already has. The Swift runtime's own libraries are left out:
# the image's build links them in (--static-swift-stdlib).
#   scripts/check-image-libraries.sh [BINARY]   (default: the debug build's botcluster)
set -euo pipefail
cd "$(dirname "$0")/.."
binary=${1:-$(swift build --show-bin-path)/botcluster}
# What debian:bookworm-slim ships that a program may link (apt and dpkg need them).
base="libc6 libgcc-s1 libstdc++6 zlib1g"
runtime=$(sed -n 's/^# RUNTIME-PACKAGES[^:]*: *//p' deploy/Dockerfile)
[[ -n "$runtime" ]] || { echo "deploy/Dockerfile: no RUNTIME-PACKAGES line" >&2; exit 1; }
grep -q "apt-get install -y --no-install-recommends $runtime" deploy/Dockerfile \
  || { echo "deploy/Dockerfile: the runtime stage does not install exactly: $runtime" >&2; exit 1; }
missing=0
while read -r library path; do
  case "$path" in */lib/swift/*) continue ;; esac   # the Swift runtime: linked in by the image's build
  real=$(readlink -f "$path")
  package=$(dpkg -S "$real" 2>/dev/null || dpkg -S "${real#/usr}" 2>/dev/null || dpkg -S "/usr$real" 2>/dev/null || true)
  package=${package%%:*}
  if [[ -z "$package" ]]; then
    echo "$library ($real): no Debian package owns it" >&2; missing=1; continue
  fi
  if [[ " $base $runtime " != *" $package "* ]]; then
    echo "$library comes from $package, which the runtime image does not install" >&2; missing=1
  fi
done < <(ldd "$binary" | awk '$2 == "=>" && $3 ~ /^\// { print $1, $3 }')
((missing == 0)) || exit 1
echo "runtime image libraries: every library botcluster links comes from $base $runtime"
