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
