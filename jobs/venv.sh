#!/usr/bin/env bash
# Create or reuse the project's virtual environment (default .venv) and install requirements.txt.
# The venv is stamped with the sha256 of requirements.txt and pyproject.toml: both unchanged -> nothing is
# reinstalled. imgtrain itself is an editable install (pip install -e .): the code is read from this
# repository, and the commands of pyproject.toml's [project.scripts] (imgtrain-train, ...) are on the venv's PATH.
#   bash jobs/venv.sh [VENV_DIR]      env: PYTHON (default python3.11), IMGTRAIN_REQUIREMENTS
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${1:-$root/.venv}
req=${IMGTRAIN_REQUIREMENTS:-$root/requirements.txt}
stamp="$venv/.requirements.sha256"

[ -f "$req" ] || { echo "venv: requirements file $req not found" >&2; exit 2; }
want=$(cat "$req" "$root/pyproject.toml" | sha256sum | cut -d' ' -f1)
if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  echo "venv: $venv is up to date with $(basename "$req")"
  exit 0
fi

if [ ! -x "$venv/bin/python" ]; then
  python=${PYTHON:-python3.11}
  command -v "$python" >/dev/null || { echo "venv: $python not found; imgtrain needs Python 3.11 (set PYTHON=...)" >&2; exit 2; }
  "$python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
    || { echo "venv: $python is not Python 3.11 (the pinned torch wheels are cp311)" >&2; exit 2; }
  echo "venv: creating $venv"
  "$python" -m venv "$venv"
fi
echo "venv: installing $(basename "$req") and imgtrain (requirements or pyproject.toml changed, or first run)"
rm -f "$stamp"
# pip warns once per local wheel folder it ignores; drop that noise, keep pip's exit status.
set +e
"$venv/bin/python" -m pip install --disable-pip-version-check --progress-bar off -r "$req" 2>&1 \
  | grep -v "is ignored"
status=${PIPESTATUS[0]}
set -e
[ "$status" -eq 0 ] || { echo "venv: pip install -r $req failed (exit $status)" >&2; exit "$status"; }
# opencv-python-headless (pinned before) and opencv-contrib-python-headless both install the cv2 package: a venv
# made before the switch keeps only the pinned one (uninstalling the other removes shared files: reinstall it)
contrib=$(grep -o '^opencv-contrib-python-headless==[^ #]*' "$req" || true)
if [ -n "$contrib" ] && "$venv/bin/python" -m pip show -q opencv-python-headless >/dev/null 2>&1; then
  "$venv/bin/python" -m pip uninstall -y -q opencv-python-headless
  "$venv/bin/python" -m pip install -q --disable-pip-version-check --force-reinstall --no-deps "$contrib" 2>&1 \
    | grep -v "is ignored" || true
fi
# imgtrain and shards: an editable install of this repository (no copy; console scripts on PATH). Its build
# backend (setuptools, pyproject.toml's [build-system]) comes from the same package sources as the requirements.
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
rm -f "$site/imgtrain-root.pth" # what venvs made before the editable install used
set +e
"$venv/bin/python" -m pip install --disable-pip-version-check --no-deps -q -e "$root" 2>&1 \
  | grep -v "is ignored"
status=${PIPESTATUS[0]}
set -e
[ "$status" -eq 0 ] || { echo "venv: pip install -e $root failed (exit $status)" >&2; exit "$status"; }
echo "$want" > "$stamp"
echo "venv: ready ($venv)"
