#!/usr/bin/env bash
# Install FastGeodis 1.0.5 (the authors' distance library for SAMRefiner's prompts) into a Python
# environment, so that tests/core/test_raster_distance.py compares `distance="raster"` with it.
# refine_hooks never imports it: `distance="raster"` is our own implementation of the same scan.
#
#   bash tools/install_fastgeodis.sh [PYTHON]        # PYTHON defaults to .venv/bin/python
#
# Idempotent. FastGeodis ships only a source archive on PyPI: it is built against the installed torch
# (about a minute on 2 cores, CPU only) and the wheel is cached per torch version in
# ${REFINE_HOOKS_CACHE:-~/.cache/refine_hooks}/wheels, then reused.
set -euo pipefail

PY="${1:-.venv/bin/python}"
VERSION="1.0.5"
say() { echo "[install_fastgeodis] $*"; }
die() { echo "[install_fastgeodis] ERROR: $*" >&2; exit 1; }

[ -x "$PY" ] || command -v "$PY" >/dev/null 2>&1 || die "python interpreter '$PY' not found"
if "$PY" -c "import FastGeodis" >/dev/null 2>&1; then
    say "FastGeodis already imports in $PY: nothing to do"
    exit 0
fi
TORCH="$("$PY" -c "import torch; print(torch.__version__.replace('+', '_'))")" || die "torch must be installed first"
WHEELS="${REFINE_HOOKS_CACHE:-$HOME/.cache/refine_hooks}/wheels/fastgeodis-$VERSION-torch$TORCH"
if ! ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    say "building FastGeodis $VERSION against torch $TORCH (about a minute)"
    mkdir -p "$WHEELS"
    # The extension includes torch's headers: it must build against this environment's torch.
    "$PY" -m pip wheel --disable-pip-version-check -q --no-build-isolation --no-deps "FastGeodis==$VERSION" \
        -w "$WHEELS.partial" || die "building FastGeodis $VERSION failed (see above)"
    mv "$WHEELS.partial"/*.whl "$WHEELS"/ && rm -rf "$WHEELS.partial"
fi
"$PY" -m pip install --disable-pip-version-check -q --no-deps "$WHEELS"/*.whl
"$PY" -c "import FastGeodis" || die "FastGeodis was installed but does not import"
say "FastGeodis $VERSION installed from $WHEELS"
