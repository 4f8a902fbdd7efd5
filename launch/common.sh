# Helpers shared by the launch scripts (sourced; each script sets PROG first).

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
die() { echo "$PROG: error: $*" >&2; exit 2; }

# Shell-quotes one word so that the printed command can be pasted back into a shell.
q() {
  local s=$1 sq="'\\''"
  if [[ -n $s && $s =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then printf '%s' "$s"
  else printf "'%s'" "${s//"'"/"$sq"}"; fi
}
qline() { local out="" w; for w in "$@"; do out+="${out:+ }$(q "$w")"; done; printf '%s' "$out"; }

# Prints the command (--dry-run) or runs it; run_from FILE CMD... feeds FILE to CMD's stdin.
run() { if ((dry_run)); then qline "$@"; echo; else "$@"; fi; }
run_from() {
  local file=$1; shift
  if ((dry_run)); then echo "$(qline "$@") < $(q "$file")"; else "$@" < "$file"; fi
}

# A path on a remote host as one shell word; a leading ~/ stays unquoted so that the
# remote shell expands it to that host's home.
rword() {
  case $1 in
    "~") printf '~' ;;
    "~/"*) printf '~/%s' "$(q "${1#"~/"}")" ;;
    *) q "$1" ;;
  esac
}

# pack_tree OUT.tar.gz: the repository's sources, plus a file PINNED saying what they are
# (git commit and uncommitted changes). In a git checkout: tracked and untracked files
# that .gitignore does not exclude; otherwise all but .git, .venv, caches, logs, workdirs.
pack_tree() {
  local out=$1 stage f
  stage=$(mktemp -d "${TMPDIR:-/tmp}/musicflax-pack.XXXXXX")
  {
    echo "packed $(date -u '+%Y-%m-%dT%H:%M:%SZ') on $(hostname) from $REPO"
    if git -C "$REPO" rev-parse --verify -q HEAD >/dev/null 2>&1; then
      echo "git commit $(git -C "$REPO" rev-parse HEAD)"
      git -C "$REPO" status --porcelain | sed 's/^/uncommitted: /'
    fi
  } > "$stage/PINNED"
  if git -C "$REPO" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    (cd "$REPO" && git ls-files -z -c -o --exclude-standard) |
      while IFS= read -r -d '' f; do [[ -f $REPO/$f ]] && printf '%s\0' "$f"; done > "$stage/files"
    tar -cf "$stage/src.tar" -C "$REPO" --null -T "$stage/files"
  else
    tar -cf "$stage/src.tar" -C "$REPO" --exclude=.git --exclude=.venv --exclude=__pycache__ \
      --exclude='*.egg-info' --exclude=.pytest_cache --exclude='*.log' \
      --exclude=./workdirs --exclude=./build --exclude=./tmp .
  fi
  tar -rf "$stage/src.tar" -C "$stage" PINNED
  gzip -c "$stage/src.tar" > "$out"
  rm -rf "$stage"
}

# The workdir: a gs:// URL or an absolute path that every host mounts at the same place.
check_workdir() {
  [[ -n $workdir ]] || die "missing --workdir (gs://bucket/path, or a folder every $1 mounts)"
  [[ $workdir == gs://?* || $workdir == /* ]] ||
    die "--workdir must be gs://bucket/path or an absolute path on a filesystem every $1 mounts, got '$workdir'"
  workdir=${workdir%/}
}

