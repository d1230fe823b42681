#!/bin/sh
# Writes the workspace's skeleton to DIR: Cargo.toml, Cargo.lock, every
# package's manifest and, for every target cargo knows of (libraries,
# binaries, tests, benches, build scripts), a stub source file. Building
# the skeleton compiles the dependencies and nothing of ours, so the
# Dockerfile caches that slow layer until a manifest or Cargo.lock changes.
#
# Nothing here names a crate: members and targets come from
# `cargo metadata`, so a crate added to the workspace is in the skeleton
# without editing anything (tests/deploy.rs checks the skeleton against the
# workspace). Run from the workspace root:  sh deploy/docker/skeleton.sh DIR
set -eu

out="${1:?usage: skeleton.sh DIR}"
meta="$(cargo metadata --no-deps --offline --format-version 1)"
root="$(printf '%s' "$meta" | sed -n 's/.*"workspace_root":"\([^"]*\)".*/\1/p')"
[ -n "$root" ] || { echo "skeleton.sh: no workspace_root in cargo metadata" >&2; exit 1; }

mkdir -p "$out"
cp "$root/Cargo.toml" "$root/Cargo.lock" "$out/"

# Package manifests: "manifest_path":"/abs/path/Cargo.toml".
printf '%s' "$meta" | grep -o '"manifest_path":"[^"]*"' | sed 's/^"manifest_path":"//; s/"$//' |
while read -r manifest; do
    rel="${manifest#"$root"/}"
    mkdir -p "$out/$(dirname "$rel")"
    cp "$manifest" "$out/$rel"
done

# Targets: {"kind":["lib"],"crate_types":[...],"name":"...","src_path":"/abs/src/lib.rs",...}.
# A library stub is empty; everything else (bin, test, bench, example,
# custom-build) gets an empty `main`.
printf '%s' "$meta" | grep -o '"kind":\[[^]]*\],"crate_types":\[[^]]*\],"name":"[^"]*","src_path":"[^"]*"' |
while read -r target; do
    kind="$(printf '%s' "$target" | sed 's/^"kind":\[\([^]]*\)\].*/\1/')"
    src="$(printf '%s' "$target" | sed 's/.*"src_path":"\([^"]*\)"$/\1/')"
    rel="${src#"$root"/}"
    mkdir -p "$out/$(dirname "$rel")"
    case "$kind" in
        *lib*|*proc-macro*) : > "$out/$rel" ;;
        *) echo 'fn main() {}' > "$out/$rel" ;;
    esac
done
