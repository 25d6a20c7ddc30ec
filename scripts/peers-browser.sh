#!/usr/bin/env bash
# Browser-test prerequisites (issue 8), idempotent: Debian's chromium (driven by playwright-core,
# which downloads no browser of its own) and the npm packages of tests/ui (playwright-core,
# axe-core, htmx.org — exact versions in tests/ui/package-lock.json).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
ui="$here/../tests/ui"

need_apt=()
[[ -x /usr/bin/chromium ]] || need_apt+=(chromium)
command -v npm >/dev/null || need_apt+=(nodejs npm)
if ((${#need_apt[@]})); then
  echo "peers-browser: installing ${need_apt[*]}"
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null; }; then
    echo "peers-browser: could not install ${need_apt[*]}; the browser tests will SKIP (or fail under CI=true)"
  fi
fi

# npm ci when node_modules is missing or was installed from another lock file.
if command -v npm >/dev/null; then
  lock_hash=$(sha256sum "$ui/package-lock.json" | cut -d' ' -f1)
  stamp="$ui/node_modules/.patchbay-lock-sha256"
  if [[ ! -f $stamp || $(cat "$stamp") != "$lock_hash" ]]; then
    echo "peers-browser: npm ci in tests/ui"
    (cd "$ui" && npm ci --no-audit --no-fund --loglevel=error) && echo "$lock_hash" >"$stamp"
  fi
fi
if [[ -x /usr/bin/chromium && -d $ui/node_modules/playwright-core ]]; then
  echo "peers-browser: chromium $(/usr/bin/chromium --version 2>/dev/null | awk '{print $2}') and tests/ui packages ready"
else
  echo "peers-browser: browser tests NOT ready; they will SKIP (or fail under CI=true)"
fi
