#!/usr/bin/env bash
# Installs Debian's Chromium and ChromeDriver for the browser test of the
# session timeline page, when they are missing. Needs root (apt-get); the
# test reports clearly when they are absent.
set -euo pipefail

if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install-browser: chromium/chromedriver missing and not root; run: apt-get install chromium chromium-driver" >&2
  exit 0
fi
echo "install-browser: installing chromium and chromium-driver (Debian packages)"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
chromium --version
