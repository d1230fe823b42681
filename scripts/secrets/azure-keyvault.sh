#!/usr/bin/env bash
# Secrets from Azure Key Vault, for the engine's `exec` secrets backend
# (Vector's exec secret protocol, version 1.0).
#
# Protocol: stdin is one JSON document, {"version":"1.0","secrets":["k1",...]};
# stdout is one JSON document with an entry per requested key:
#   {"k1":{"value":"...","error":null},"k2":{"value":null,"error":"..."}}
# Each key is fetched independently: a key that cannot be read gets an error
# naming it (and the az CLI's own message), the others still resolve, and
# the script exits 0. Only a malformed request (or no jq / az CLI) makes it
# exit nonzero. Error messages never hold a secret value.
#
# Key syntax: <vault-name>/<secret-name>, e.g. babynames-kv/hubspot-token,
# or just <secret-name> when AZURE_KEYVAULT_NAME names the vault. The latest
# version of the secret is read; its value is returned byte for byte.
#
# Runs, per key:  az keyvault secret show --vault-name V --name N -o json
# and takes .value. Needs the Azure CLI and jq. The az CLI takes a second or
# so per call: give the backend a generous timeout (e.g. "30s").
#
# Environment:
#   AZURE_KEYVAULT_NAME  the vault for keys that name none
#   The az CLI's own login: `az login` (a user, or --identity for a managed
#   identity, or a service principal), AZURE_CONFIG_DIR, ... as usual.
#
# Permissions: the identity needs to read secret values in each vault: the
# "Key Vault Secrets User" role on the vault (Azure RBAC vaults), or an
# access policy with the `get` secret permission (access-policy vaults).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/exec-protocol.sh"

default_vault=${AZURE_KEYVAULT_NAME:-}

exec_protocol_begin az

# Key Vault's own naming rules (which also keep names from reading as flags).
vault_re='^[A-Za-z][A-Za-z0-9-]{1,22}[A-Za-z0-9]$'
name_re='^[A-Za-z0-9][A-Za-z0-9-]{0,126}$'

while IFS= read -r key; do
    case "$key" in
        */*/*)
            fail "$key" "expected <vault-name>/<secret-name> or <secret-name>"
            continue
            ;;
        */*)
            vault=${key%%/*}
            name=${key#*/}
            ;;
        *)
            if [[ -z "$default_vault" ]]; then
                fail "$key" "no vault: write <vault-name>/<secret-name> or set AZURE_KEYVAULT_NAME"
                continue
            fi
            vault=$default_vault
            name=$key
            ;;
    esac
    if [[ ! "$vault" =~ $vault_re ]]; then
        fail "$key" "\"$vault\" is not a valid vault name (3-24 letters, digits and '-')"
        continue
    fi
    if [[ ! "$name" =~ $name_re ]]; then
        fail "$key" "\"$name\" is not a valid secret name (letters, digits and '-')"
        continue
    fi
    if run_cli "$key" "az keyvault secret show $vault/$name" \
        az keyvault secret show --vault-name "$vault" --name "$name" -o json; then
        add_json_entry "$key" "az keyvault secret show" '
            if (.value | type) == "string" then
                {($k): {value: .value, error: null}}
              else
                {($k): {value: null, error: "\($k): secret \($s) has no value"}}
              end' --arg s "$vault/$name"
    fi
done <"$tmp/keys"

exec_protocol_answer
