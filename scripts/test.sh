#!/usr/bin/env bash
# Run the workspace's tests (arguments go to pytest). Exit code 5 (no tests collected) is
# turned into a failure with a message: a test run that tested nothing must not look green.
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
"${GF_VENV:-$ROOT/.venv}/bin/python" -m pytest "$@"
rc=$?
if [[ $rc == 5 ]]; then
  echo "pytest collected no tests: treating this as a failure" >&2
  exit 1
fi
exit $rc
