#!/usr/bin/env bash
# Installs what the console's browser tests and screenshots drive: Debian's Chromium and its
# ChromeDriver (/usr/bin/chromium, /usr/bin/chromedriver), when they are missing. Needs root
# (or sudo) the first time; does nothing once they are there.
set -euo pipefail
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
  exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "browser.sh: installing chromium and chromium-driver needs root or sudo" >&2; exit 1; }
  sudo=sudo
fi
echo "browser.sh: installing Debian's chromium and chromium-driver for the console's browser tests" >&2
export DEBIAN_FRONTEND=noninteractive
# The package lists may be stale on a fresh machine: refresh them if the first try fails.
$sudo apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 \
  || { $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q chromium chromium-driver >/dev/null; } \
  || { echo "browser.sh: could not install chromium and chromium-driver with apt-get" >&2; exit 1; }
