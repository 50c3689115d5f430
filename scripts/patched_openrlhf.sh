#!/usr/bin/env bash
# Build a git work tree of OpenRLHF 0.11.2 with patches/ applied (docs/upstreaming.md).
#
#   scripts/patched_openrlhf.sh [--stock] DEST [SOURCE]
#
# SOURCE holds pristine OpenRLHF 0.11.2 sources; default: the openrlhf installed for the
# python on PATH ($PYTHON overrides). It may be
#   - a directory holding openrlhf/ and tests/ with the *.dist-info/RECORD of the install
#     (site-packages: the wheel installs OpenRLHF's tests/ there too), or
#   - the wheel itself (pip download openrlhf==0.11.2 --no-deps -d DIR).
# Every file is checked against the sha256 in the release's RECORD before anything is
# applied, so the result is 0.11.2 plus the patches and nothing else.
#
# DEST becomes a git repository: commit "OpenRLHF 0.11.2" (openrlhf/ and tests/, tag
# v0.11.2), then one commit per patch, applied with `git am` (which refuses anything that
# does not apply cleanly). With --stock the patches are left out.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python}"
apply=1
if [[ "${1:-}" == "--stock" ]]; then apply=0; shift; fi
dest="${1:?usage: $0 [--stock] DEST [SOURCE]}"
source="${2:-}"

if [[ -e "$dest" ]]; then echo "$dest exists; give a new directory" >&2; exit 2; fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

if [[ -z "$source" ]]; then
  source="$("$python" -c 'import importlib.util, pathlib; print(pathlib.Path(importlib.util.find_spec("openrlhf").origin).parents[1])')"
fi
if [[ -f "$source" && "$source" == *.whl ]]; then
  "$python" -m zipfile -e "$source" "$work/wheel"
  source="$work/wheel"
fi

# Copy openrlhf/ and tests/ as RECORD lists them (the wheel keeps them under
# openrlhf-0.11.2.data/purelib/), verifying each file's hash on the way.
"$python" - "$source" "$dest" <<'EOF'
import base64, hashlib, shutil, sys
from pathlib import Path

source, dest = Path(sys.argv[1]), Path(sys.argv[2])
records = sorted(source.glob("openrlhf-0.11.2.dist-info/RECORD"))
if not records:
    sys.exit(f"no openrlhf-0.11.2.dist-info/RECORD under {source}: not an OpenRLHF 0.11.2 install or wheel")
copied = 0
for line in records[0].read_text().splitlines():
    path, digest, _ = line.rsplit(",", 2)
    relative = path.split("/purelib/", 1)[1] if ".data/purelib/" in path else path
    if not relative.startswith(("openrlhf/", "tests/")) or not digest:
        continue
    data = (source / path).read_bytes()
    actual = "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    if actual != digest:
        sys.exit(f"{source / path} differs from the 0.11.2 release (RECORD {digest}, file {actual})")
    target = dest / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    copied += 1
print(f"copied {copied} files of OpenRLHF 0.11.2, each matching its RECORD hash")
EOF

export GIT_AUTHOR_NAME=openrlhf-cero GIT_AUTHOR_EMAIL=openrlhf-cero@users.noreply.github.com
export GIT_COMMITTER_NAME=openrlhf-cero GIT_COMMITTER_EMAIL=openrlhf-cero@users.noreply.github.com
export GIT_AUTHOR_DATE=2026-01-01T00:00:00Z GIT_COMMITTER_DATE=2026-01-01T00:00:00Z
git -C "$dest" init -q
git -C "$dest" add -A
git -C "$dest" commit -q -m "OpenRLHF 0.11.2"
git -C "$dest" tag v0.11.2
if (( apply )); then
  git -C "$dest" apply --check "$here"/patches/*.patch
  git -C "$dest" am -q "$here"/patches/*.patch
fi
git -C "$dest" log --oneline
