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
. "$(dirname "${BASH_SOURCE[0]}")/exec-protocol.sh"

project=${CLOUDSDK_CORE_PROJECT:-${GOOGLE_CLOUD_PROJECT:-}}

exec_protocol_begin gcloud

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
    if run_cli "$key" "gcloud secrets versions access $version --secret=$secret" \
        gcloud secrets versions access "$version" --secret="$secret" ${project_args[@]+"${project_args[@]}"}; then
        # -R -s: the whole payload as one string, byte for byte.
        jq -c -R -s --arg k "$key" \
            '{($k): {value: (if endswith("\n") then .[:-1] else . end), error: null}}' \
            "$tmp/out" >>"$results"
    fi
done <"$tmp/keys"

exec_protocol_answer
