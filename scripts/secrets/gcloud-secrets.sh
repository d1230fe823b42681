#!/usr/bin/env bash
# Secrets from Google Cloud Secret Manager, for the engine's `exec` secrets
# backend (Vector's exec secret protocol, version 1.0).
#
# Protocol: stdin is one JSON document, {"version":"1.0","secrets":["k1",...]};
# stdout is one JSON document with an entry per requested key:
#   {"k1":{"value":"...","error":null},"k2":{"value":null,"error":"..."}}
# Each key is fetched independently: a key that cannot be read gets an error
# naming it (and the gcloud CLI's own message), the others still resolve, and
# the script exits 0. Only a malformed request (or no jq / gcloud CLI) makes
# it exit nonzero. Error messages never hold a secret value.
#
# Key syntax: <secret> or <secret>@<version>, e.g. hubspot-token,
# hubspot-token@3; the version is a number or `latest` (the default).
# <secret> may also be a full name, projects/<project>/secrets/<secret>.
#
# Runs, per key:
#   gcloud secrets versions access <version> --secret=<secret> [--project=P]
# whose stdout is the secret's payload, raw. The value is that payload with
# ONE trailing newline removed, if it ends with one: values are often stored
# with `echo ... | gcloud secrets create x --data-file=-`, which adds it, and
# a value never means to end in a newline. A payload that ends in two keeps
# one. Payloads must be UTF-8 text (JSON strings cannot carry other bytes;
# invalid bytes would come out as U+FFFD). Needs the gcloud CLI and jq. The
# gcloud CLI takes a second or so per call: give the backend a generous
# timeout (e.g. "30s").
#
# Environment:
#   CLOUDSDK_CORE_PROJECT, else GOOGLE_CLOUD_PROJECT: the project, passed as
#                   --project; with neither, gcloud's configured project.
#   The gcloud CLI's own credentials (`gcloud auth login`, a service
#   account's key via `gcloud auth activate-service-account`, or the
#   metadata server on GCE/GKE/Cloud Run), CLOUDSDK_CONFIG, ... as usual.
#
# Permissions: the identity needs roles/secretmanager.secretAccessor on each
# secret (or on the project).
set -euo pipefail

project=${CLOUDSDK_CORE_PROJECT:-${GOOGLE_CLOUD_PROJECT:-}}

die() { echo "gcloud-secrets.sh: $*" >&2; exit 1; }
command -v jq >/dev/null || die "jq is not on PATH (see scripts/ensure-jq)"
command -v gcloud >/dev/null || die "the gcloud CLI is not on PATH"

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

# What the CLI said on stderr, on one line: it names the secret and the
# failure, never a value.
cli_message() {
    local msg
    # The first ERROR line if there is one (gcloud says it all there), else
    # every line joined.
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

# Secret Manager's naming rules (which also keep names from reading as flags).
secret_re='^(projects/[a-z0-9][a-z0-9.:-]*/secrets/)?[A-Za-z0-9_-]{1,255}$'
version_re='^(latest|[1-9][0-9]*)$'

project_args=()
if [[ -n "$project" ]]; then
    project_args=(--project="$project")
fi

while IFS= read -r key; do
    secret=$key
    version=latest
    if [[ "$key" == *@* ]]; then
        secret=${key%@*}
        version=${key##*@}
    fi
    if [[ ! "$secret" =~ $secret_re ]]; then
        fail "$key" "\"$secret\" is not a valid secret name (letters, digits, '_' and '-'); expected <secret> or <secret>@<version>"
        continue
    fi
    if [[ ! "$version" =~ $version_re ]]; then
        fail "$key" "\"$version\" is not a version: expected a number or 'latest'"
        continue
    fi
    # stdin from /dev/null: the CLI must not read the key list.
    if gcloud secrets versions access "$version" --secret="$secret" ${project_args[@]+"${project_args[@]}"} \
        </dev/null >"$tmp/out" 2>"$tmp/err"; then
        # -R -s: the whole payload as one string, byte for byte.
        jq -c -R -s --arg k "$key" \
            '{($k): {value: (if endswith("\n") then .[:-1] else . end), error: null}}' \
            "$tmp/out" >>"$results"
    else
        status=$?
        fail "$key" "gcloud secrets versions access $version --secret=$secret failed (exit $status): $(cli_message "$tmp/err")"
    fi
done <"$tmp/keys"

jq -cs 'add // {}' "$results"
