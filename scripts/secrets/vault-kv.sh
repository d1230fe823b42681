#!/usr/bin/env bash
# Secrets from HashiCorp Vault's KV v2 engine, for the engine's `exec`
# secrets backend (Vector's exec secret protocol, version 1.0).
#
# Protocol: stdin is one JSON document, {"version":"1.0","secrets":["k1",...]};
# stdout is one JSON document with an entry per requested key:
#   {"k1":{"value":"...","error":null},"k2":{"value":null,"error":"..."}}
# Each key is fetched independently: a key that cannot be read gets an error
# naming it (and the vault CLI's own message), the others still resolve, and
# the script exits 0. Only a malformed request (or no jq / vault CLI) makes
# it exit nonzero. Error messages never hold a secret value.
#
# Key syntax: <path>#<field>, e.g. babynames/prod#hubspot_token: the field
# `hubspot_token` of the latest version of the secret at `babynames/prod`
# (split at the first `#`). A field holding a non-string JSON value (number,
# object, ...) is returned as its JSON text.
#
# Runs, per key:  vault kv get -format=json -mount="$VAULT_KV_MOUNT" <path>
# and takes .data.data[<field>]. Needs vault >= 1.11 (for -mount) and jq.
#
# Environment:
#   VAULT_KV_MOUNT  the KV v2 mount (default: secret)
#   VAULT_ADDR, VAULT_TOKEN, VAULT_NAMESPACE, VAULT_CACERT, ...
#                   read by the vault CLI itself, as usual (or the token
#                   helper, ~/.vault-token). This script never prints them.
#
# Permissions: the token's policy needs `read` on <mount>/data/<path>, e.g.
#   path "secret/data/babynames/*" { capabilities = ["read"] }
set -euo pipefail

mount=${VAULT_KV_MOUNT:-secret}
mount=${mount%/}

die() { echo "vault-kv.sh: $*" >&2; exit 1; }
command -v jq >/dev/null || die "jq is not on PATH (see scripts/ensure-jq)"
command -v vault >/dev/null || die "the vault CLI is not on PATH"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
results="$tmp/results"
: >"$results"

cat >"$tmp/request"
jq -e -s 'length == 1 and (.[0] | type == "object" and .version == "1.0"
        and (.secrets | type == "array" and all(.[]; type == "string" and (contains("\n") | not))))' \
    "$tmp/request" >/dev/null 2>&1 ||
    die 'stdin is not one request {"version":"1.0","secrets":["key",...]} (keys are strings without newlines)'
jq -r '.secrets[]' "$tmp/request" >"$tmp/keys"

# What the CLI said on stderr, on one line: it names the path and the
# failure, never a value.
cli_message() {
    local msg
    # The first ERROR line if there is one (az and gcloud say it all there),
    # else every line joined (vault's API errors span several).
    msg=$(grep -m 1 '^ERROR' "$1") ||
        msg=$(grep -v -e '^[[:space:]]*$' -e '^WARNING' "$1" | tr -s '[:space:]' ' ') || true
    msg=$(printf '%s' "$msg" | tr -s '[:space:]' ' ')
    msg=${msg% }
    if ((${#msg} > 400)); then
        msg="${msg:0:400}…"
    fi
    printf '%s' "${msg:-no message on stderr}"
}

fail() { # key message
    jq -cn --arg k "$1" --arg e "$1: $2" '{($k): {value: null, error: $e}}' >>"$results"
}

while IFS= read -r key; do
    if [[ "$key" != *"#"* ]]; then
        fail "$key" "expected <path>#<field>"
        continue
    fi
    path=${key%%#*}
    field=${key#*#}
    path=${path#/}
    if [[ -z "$path" || -z "$field" ]]; then
        fail "$key" "expected <path>#<field>"
        continue
    fi
    if [[ "$path" == -* ]]; then
        fail "$key" "a path may not start with '-'"
        continue
    fi
    # stdin from /dev/null: the CLI must not read the key list.
    if vault kv get -format=json -mount="$mount" "$path" \
        </dev/null >"$tmp/out" 2>"$tmp/err"; then
        if ! jq -c --arg k "$key" --arg f "$field" --arg p "$mount/$path" '
            (.data.data // null) as $d
            | if ($d | type) != "object" then
                {($k): {value: null, error: "\($k): no data at \($p) (is its latest version deleted or destroyed, or is the mount KV v1?)"}}
              elif ($d | has($f) | not) then
                {($k): {value: null, error: "\($k): no field \"\($f)\" in \($p)"}}
              elif $d[$f] == null then
                {($k): {value: null, error: "\($k): field \"\($f)\" in \($p) is null"}}
              else
                {($k): {value: ($d[$f] | if type == "string" then . else tojson end), error: null}}
              end' "$tmp/out" >"$tmp/entry" 2>/dev/null; then
            fail "$key" "vault kv get printed something that is not the expected JSON"
            continue
        fi
        cat "$tmp/entry" >>"$results"
    else
        status=$?
        fail "$key" "vault kv get $mount/$path failed (exit $status): $(cli_message "$tmp/err")"
    fi
done <"$tmp/keys"

jq -cs 'add // {}' "$results"
