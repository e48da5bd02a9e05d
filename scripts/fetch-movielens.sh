#!/usr/bin/env bash
# Fetch MovieLens-100k (GroupLens u.data) into data/ml-100k/u.data.
#
# The GroupLens licence forbids redistribution, so the data is never committed: it is taken from
# the PyPI wheel of recbole 1.2.1, which carries it as ml-100k.inter (u.data plus one header line).
# Both the wheel and the resulting u.data are checked against pinned sha256 sums. Idempotent: a
# second run with a good file in place does nothing.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dest_dir="${EMBEDSTREAM_DATA_DIR:-$root/data}/ml-100k"
dest="$dest_dir/u.data"
wheel_name="recbole-1.2.1-py3-none-any.whl"
wheel_sha256="9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
udata_sha256="06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490"

sha_of() { sha256sum "$1" | cut -d' ' -f1; }

if [[ -f "$dest" && "$(sha_of "$dest")" == "$udata_sha256" ]]; then
  echo "ml-100k already present: $dest"
  exit 0
fi

mkdir -p "$dest_dir"
cache="${EMBEDSTREAM_CACHE_DIR:-$root/.cache}/wheels"
mkdir -p "$cache"
wheel="$cache/$wheel_name"
if [[ ! -f "$wheel" || "$(sha_of "$wheel")" != "$wheel_sha256" ]]; then
  echo "downloading recbole==1.2.1 wheel from PyPI"
  python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$cache" "recbole==1.2.1"
fi
if [[ "$(sha_of "$wheel")" != "$wheel_sha256" ]]; then
  echo "error: $wheel has sha256 $(sha_of "$wheel"), expected $wheel_sha256" >&2
  exit 1
fi

tmp=$(mktemp "$dest_dir/.u.data.XXXXXX")
trap 'rm -f "$tmp"' EXIT
python3 - "$wheel" "$tmp" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    lines = z.read("recbole/dataset_example/ml-100k/ml-100k.inter").splitlines(keepends=True)
with open(sys.argv[2], "wb") as out:
    out.writelines(lines[1:])  # drop the header: what remains is GroupLens u.data
PY
if [[ "$(sha_of "$tmp")" != "$udata_sha256" ]]; then
  echo "error: extracted u.data has sha256 $(sha_of "$tmp"), expected $udata_sha256" >&2
  exit 1
fi
mv "$tmp" "$dest"
trap - EXIT
echo "ml-100k written: $dest ($(wc -l <"$dest") ratings)"
