#!/usr/bin/env bash
# Fetch MovieLens-100k (GroupLens u.data) into data/ml-100k/u.data, and its movie titles into
# data/ml-100k/ml-100k.item (for the demo page).
#
# The GroupLens licence forbids redistribution, so the data is never committed: it is taken from
# the PyPI wheel of recbole 1.2.1, which carries it as ml-100k.inter (u.data plus one header line)
# and the titles as ml-100k.item (RecBole's atomic file: tab-separated item_id, movie_title,
# release_year, class, one header line). The wheel and both files are checked against pinned
# sha256 sums. Idempotent: a second run with good files in place does nothing.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dest_dir="${EMBEDSTREAM_DATA_DIR:-$root/data}/ml-100k"
dest="$dest_dir/u.data"
wheel_name="recbole-1.2.1-py3-none-any.whl"
wheel_sha256="9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
udata_sha256="06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490"
items="$dest_dir/ml-100k.item"
items_sha256="51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532"

sha_of() { sha256sum "$1" | cut -d' ' -f1; }

if [[ -f "$dest" && "$(sha_of "$dest")" == "$udata_sha256" \
  && -f "$items" && "$(sha_of "$items")" == "$items_sha256" ]]; then
  echo "ml-100k already present: $dest, $items"
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
tmp_items=$(mktemp "$dest_dir/.ml-100k.item.XXXXXX")
trap 'rm -f "$tmp" "$tmp_items"' EXIT
python3 - "$wheel" "$tmp" "$tmp_items" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    lines = z.read("recbole/dataset_example/ml-100k/ml-100k.inter").splitlines(keepends=True)
    items = z.read("recbole/dataset_example/ml-100k/ml-100k.item")
with open(sys.argv[2], "wb") as out:
    out.writelines(lines[1:])  # drop the header: what remains is GroupLens u.data
with open(sys.argv[3], "wb") as out:
    out.write(items)
PY
if [[ "$(sha_of "$tmp")" != "$udata_sha256" ]]; then
  echo "error: extracted u.data has sha256 $(sha_of "$tmp"), expected $udata_sha256" >&2
  exit 1
fi
if [[ "$(sha_of "$tmp_items")" != "$items_sha256" ]]; then
  echo "error: extracted ml-100k.item has sha256 $(sha_of "$tmp_items"), expected $items_sha256" >&2
  exit 1
fi
mv "$tmp" "$dest"
mv "$tmp_items" "$items"
trap - EXIT
echo "ml-100k written: $dest ($(wc -l <"$dest") ratings), $items ($(($(wc -l <"$items") - 1)) titles)"
