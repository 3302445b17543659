#!/usr/bin/env bash
# Install Xvfb and Mesa (napari's canvas needs a real GL context) when they are missing.
# Debian/Ubuntu only; a no-op when everything is present.
set -euo pipefail
packages=(xvfb xauth libgl1 libglx-mesa0 libgl1-mesa-dri libegl1 libxkbcommon-x11-0 libxcb-cursor0
  libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-shape0
  libxcb-xfixes0 libxcb-xinerama0 libdbus-1-3 libfontconfig1)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null; then
  echo "medloop: missing system packages (${missing[*]}) and no apt-get; install them by hand" >&2
  exit 1
fi
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
echo "Installing system packages: ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
