#!/bin/sh
# Install Debian's chromium (for the dashboard screenshot test) if /usr/bin/chromium is missing.
# Exit 0 when chromium is available afterwards, non-zero (with a reason on stderr) otherwise.
set -u
[ -x /usr/bin/chromium ] && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "ensure_chromium: /usr/bin/chromium missing and not root (run: apt-get update && apt-get install -y chromium)" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure_chromium: /usr/bin/chromium missing and no apt-get on this system" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null 2>&1 || { echo "ensure_chromium: apt-get update failed (no network?)" >&2; exit 1; }
apt-get install -y -qq chromium >/dev/null 2>&1 || { echo "ensure_chromium: apt-get install chromium failed" >&2; exit 1; }
[ -x /usr/bin/chromium ] || { echo "ensure_chromium: chromium installed but /usr/bin/chromium missing" >&2; exit 1; }
