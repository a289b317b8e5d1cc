#!/usr/bin/env bash
# tree-state.sh save|check: make test's guard that no test or script
# changes the checkout. `save` records the state of every tracked file and
# of untracked files that are not ignored; `check` fails, naming the files,
# if that state changed since. A developer's own uncommitted edits are part
# of the saved state, so they do not count.
set -o errexit -o nounset -o pipefail
LOG_PREFIX=tree-state
# shellcheck source=hack/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

STATE_FILE=$(git rev-parse --git-path storepkg-tree-state)

state() {
  git status --porcelain=v1 --untracked-files=all
  # Contents too: a file already modified before may be modified again.
  git diff HEAD --binary | sha256sum
  git ls-files --others --exclude-standard -z | xargs -0r sha256sum
}

case "${1:-}" in
  save) state >"$STATE_FILE" ;;
  check)
    [[ -f $STATE_FILE ]] || die "no saved state: run '$0 save' first"
    if ! diff -u "$STATE_FILE" <(state) >&2; then
      die "the checkout changed during the run (lines above: - before, + after); no test or script may write to it"
    fi
    rm -f "$STATE_FILE"
    log "ok: the checkout is as it was"
    ;;
  *) die "usage: $0 save|check" ;;
esac
