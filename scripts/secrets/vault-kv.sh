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
. "$(dirname "${BASH_SOURCE[0]}")/exec-protocol.sh"

mount=${VAULT_KV_MOUNT:-secret}
mount=${mount%/}

exec_protocol_begin vault

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
    if run_cli "$key" "vault kv get $mount/$path" vault kv get -format=json -mount="$mount" "$path"; then
        add_json_entry "$key" "vault kv get" '
            (.data.data // null) as $d
            | if ($d | type) != "object" then
                {($k): {value: null, error: "\($k): no data at \($p) (is its latest version deleted or destroyed, or is the mount KV v1?)"}}
              elif ($d | has($f) | not) then
                {($k): {value: null, error: "\($k): no field \"\($f)\" in \($p)"}}
              elif $d[$f] == null then
                {($k): {value: null, error: "\($k): field \"\($f)\" in \($p) is null"}}
              else
                {($k): {value: ($d[$f] | if type == "string" then . else tojson end), error: null}}
              end' --arg f "$field" --arg p "$mount/$path"
    fi
done <"$tmp/keys"

exec_protocol_answer
