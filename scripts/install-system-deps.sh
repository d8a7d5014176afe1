#!/usr/bin/env bash
# Debian packages the test suite needs. Installed only when run as root on Debian/Ubuntu;
# elsewhere the tests that need them are skipped with the reason printed.
set -euo pipefail
PACKAGES=(${DLHUB_HPC_SYSTEM_PACKAGES:-})
if [ ${#PACKAGES[@]} -eq 0 ]; then
  exit 0
fi
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
  echo "not root or no apt-get: skipping ${missing[*]}; tests needing them will be skipped" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
