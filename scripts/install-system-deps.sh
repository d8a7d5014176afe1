#!/usr/bin/env bash
# Debian packages the test suite needs (scripts/system-packages.txt, plus any named in
# $DLHUB_HPC_SYSTEM_PACKAGES). Installed only when run as root on Debian/Ubuntu; elsewhere
# the tests that need them are skipped with the reason printed. Under CI=true, packages
# missing that cannot be installed here fail this script: CI must run every group.
set -euo pipefail
cd "$(dirname "$0")"
PACKAGES=($(sed -e 's/#.*//' system-packages.txt) ${DLHUB_HPC_SYSTEM_PACKAGES:-})
[ ${#PACKAGES[@]} -eq 0 ] && exit 0
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
  if [ "${CI:-}" = true ]; then
    echo "CI=true: missing ${missing[*]}, and not root or no apt-get to install them;" \
         "run 'make system-deps' as root on Debian/Ubuntu, or install them in the CI image" >&2
    exit 1
  fi
  echo "not root or no apt-get: skipping ${missing[*]}; tests needing them will be skipped" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
