#!/usr/bin/env bash
# make test: set up what the tests need, run the checks and the tests, and
# tear down what was started, whatever the outcome.
set -uo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/services.sh
. scripts/services.sh

services_install || exit 1
trap services_stop EXIT
services_start || exit 1

status=0
echo "== gofmt";       make -s fmt         || status=1
echo "== go vet";      make -s vet         || status=1
echo "== staticcheck"; make -s staticcheck || status=1
echo "== go test -race ./..."
make -s gotest || status=1
exit $status
