# shellcheck shell=bash
# Vector's exec secret protocol (version 1.0), the part shared by the example
# `exec` secret scripts: vault-kv.sh, azure-keyvault.sh and gcloud-secrets.sh
# source this file (it is not a script of its own, and not executable):
#   . "$(dirname "${BASH_SOURCE[0]}")/exec-protocol.sh"
#
# Protocol: stdin is one JSON document, {"version":"1.0","secrets":["k1",...]};
# stdout is one JSON document with an entry per requested key:
#   {"k1":{"value":"...","error":null},"k2":{"value":null,"error":"..."}}
# A key that cannot be read gets an error naming it; only a malformed request
# (or no jq / CLI) makes the script exit nonzero, with a message on stderr
# and nothing on stdout.
#
# A script runs, under `set -euo pipefail`:
#   exec_protocol_begin <cli>    checks jq and <cli>, reads and validates the
#                                request; its keys, one a line, are then in
#                                "$tmp/keys"
#   per key: fail <key> <message>, or
#     if run_cli <key> <what> <command>...; then   (its stdout in "$tmp/out")
#         add_json_entry <key> <what> <jq filter> [jq options...]
#     fi
#     or its own entry {"<key>":{"value":...,"error":null}} appended to
#     "$results"
#   exec_protocol_answer         prints the answer
# Messages on stderr start with the script's name ($0's basename).

script_name=${0##*/}

die() { echo "$script_name: $*" >&2; exit 1; }

# Checks for jq and the vault's CLI, makes "$tmp" (removed on exit), reads
# the request from stdin and writes its keys to "$tmp/keys"; dies on a
# malformed request.
exec_protocol_begin() { # cli
    command -v jq >/dev/null || die "jq is not on PATH (see scripts/ensure-jq)"
    command -v "$1" >/dev/null || die "the $1 CLI is not on PATH"

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
}

# What the CLI said on stderr, on one line: it names the vault, path or
# secret and the failure, never a value.
cli_message() { # stderr-file
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

# The entry for a key that cannot be read: its error is "<key>: <message>".
fail() { # key message
    jq -cn --arg k "$1" --arg e "$1: $2" '{($k): {value: null, error: $e}}' >>"$results"
}

# Runs the CLI for a key, its stdout to "$tmp/out"; if it fails, fails the
# key with "<what> failed (exit N): <what the CLI said>" and returns 1.
run_cli() { # key what command...
    local key=$1 what=$2 status=0
    shift 2
    # stdin from /dev/null: the CLI must not read the key list.
    "$@" </dev/null >"$tmp/out" 2>"$tmp/err" || status=$?
    if ((status != 0)); then
        # (`|| exit`: called as a condition, set -e does not stop here.)
        fail "$key" "$what failed (exit $status): $(cli_message "$tmp/err")" || exit
        return 1
    fi
}

# The entry for a key from the CLI's JSON in "$tmp/out": the jq filter makes
# the whole entry, with the key in $k; if jq cannot, the key fails with
# "<what> printed something that is not the expected JSON".
add_json_entry() { # key what filter [jq options...]
    if jq -c --arg k "$1" "${@:4}" "$3" "$tmp/out" >"$tmp/entry" 2>/dev/null; then
        cat "$tmp/entry" >>"$results"
    else
        fail "$1" "$2 printed something that is not the expected JSON"
    fi
}

# The answer: every key's entry, in one object.
exec_protocol_answer() {
    jq -cs 'add // {}' "$results"
}
