#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian / Raspberry Pi OS machine: Debian packages, then .venv.
set -euo pipefail
cd "$(dirname "$0")/.."

# What `make test` and `make demo` need: broker, media, build tools, the image tools the fast
# image tests use, systemd-analyze, Chromium for the report screenshots, and PipeWire with its
# WebRTC echo canceller plus sox and espeak-ng for the echo test rig, and RAUC (bundles, the
# update service on a private system bus) for the update tests; tmux for the watch test in a real terminal;
# chromium-driver for the dashboard's browser tests (Selenium drives Debian's Chromium).
# systemd-journal-remote writes real journal files for the logs tests (no journald here); casync for RAUC delta bundles.
APT_PACKAGES=(
  mosquitto mosquitto-clients ffmpeg libvlc5 vlc-plugin-base vlc-plugin-access-extra
  nginx libnginx-mod-rtmp libsystemd-dev pkg-config libcap-dev gcc python3-venv python3-dev
  jq openssl xvfb vlc-plugin-video-output chromium chromium-driver
  fdisk dosfstools mtools e2fsprogs xz-utils util-linux systemd bmap-tools
  pipewire wireplumber pipewire-pulse libspa-0.2-modules pulseaudio-utils dbus sox espeak-ng
  rauc rauc-service squashfs-tools tmux systemd-journal-remote casync
)
# `--image-tools` (make test-slow): a real arm64 root under emulation, and booting it in qemu.
if [ "${1:-}" = "--image-tools" ]; then
  APT_PACKAGES+=(qemu-user-static binfmt-support debootstrap qemu-system-arm)
fi

sudo_if_needed() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  sudo_if_needed apt-get update -qq
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PYTHON" -m venv .venv
fi
# Reinstall only when the project's dependency list changed.
stamp=.venv/.rapat-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: installing Python packages into .venv"
  .venv/bin/pip install -q --disable-pip-version-check -e '.[test,systemd,console]'
  echo "$want" > "$stamp"
fi
