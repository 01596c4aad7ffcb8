#!/usr/bin/env bash
# Drives the emulators with third-party clients used as published (fast_bitrix24, b24pysdk,
# aioamocrm): makes a virtualenv from requirements.txt in a temporary directory, starts
# `rebuy emulate bitrix24` and `rebuy emulate amocrm` on 127.0.0.1 (free ports), runs pytest,
# and stops the emulators whatever happens. Exits with pytest's status.
#
#   connectors/emulator/sdk-tests/run.sh path/to/rebuy [pytest args...]
#
# REBUY_SDK_VENV reuses an existing virtualenv instead of making one.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
shift
[ -x "$bin" ] || { echo "no rebuy binary at $bin" >&2; exit 2; }

work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

venv="${REBUY_SDK_VENV:-$work/venv}"
if [ ! -x "$venv/bin/python" ]; then
    echo "sdk-tests: virtualenv in $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
fi

# Starts an emulator and waits for its banner's last line.
start() {
    local name=$1 last=$2
    shift 2
    "$bin" emulate "$@" --port 0 >"$work/$name.banner" 2>"$work/$name.log" &
    pids+=($!)
    for _ in $(seq 1 300); do
        if grep -q "$last" "$work/$name.banner"; then return 0; fi
        if ! kill -0 "${pids[-1]}" 2>/dev/null; then break; fi
        sleep 0.1
    done
    echo "sdk-tests: the $name emulator did not start" >&2
    cat "$work/$name.banner" "$work/$name.log" >&2
    exit 1
}
start b24 "limits:" bitrix24 --seed 42 --contacts 2000 --leads 6000
start amo "rate limit:" amocrm --seed 42 --contacts 2000 --leads 6000 \
    --long-lived-token rebuy-sdk-suite-long-lived-token
echo "sdk-tests: $(head -1 "$work/b24.banner"); $(head -1 "$work/amo.banner")"

export REBUY_SDK_B24_BANNER="$work/b24.banner" REBUY_SDK_AMO_BANNER="$work/amo.banner"
cd "$here"
status=0
"$venv/bin/python" -m pytest -p no:cacheprovider -q "$@" || status=$?
exit "$status"
