#!/usr/bin/env bash
# Install the Debian packages napari needs to open a window on a virtual X
# server (Xvfb + Mesa OpenGL + the xcb libraries of Qt), when any is missing.
# Without them a napari Viewer dies with an OpenGL error on a headless machine.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
packages=(
    xvfb xauth libgl1-mesa-dri libegl1 libxkbcommon-x11-0 libxcb-icccm4
    libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0
    libxcb-xinerama0 libxcb-xfixes0 libxcb-shape0 libxcb-cursor0 libdbus-1-3
    x11-utils
)
# A CI checkout has the team's shared list beside it: honour additions there.
shared_list="$here/../../shared/ci/apt-packages.txt"
if [ -f "$shared_list" ]; then
    while read -r name; do
        [[ -z "$name" || "$name" == \#* ]] && continue
        [[ " ${packages[*]} " == *" $name "* ]] || packages+=("$name")
    done < "$shared_list"
fi

if ! command -v dpkg-query >/dev/null 2>&1; then
    if [ -z "${DISPLAY:-}" ] && ! command -v xvfb-run >/dev/null 2>&1; then
        echo "No display and no xvfb-run: install Xvfb and Mesa OpenGL with your system's" \
             "package manager, or run with a display." >&2
        exit 1
    fi
    exit 0
fi

missing=()
for name in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$name" 2>/dev/null | grep -q "install ok installed" \
        || missing+=("$name")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "Installing Debian packages napari needs headless: ${missing[*]}"
if [ "$(id -u)" -eq 0 ]; then
    sudo=()
elif command -v sudo >/dev/null 2>&1; then
    sudo=(sudo)
else
    echo "Missing Debian packages: ${missing[*]}. Ask an administrator to run:" >&2
    echo "  apt-get update && apt-get install -y ${missing[*]}" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
