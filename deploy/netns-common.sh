# Sourced by deploy/two-node-netns.sh and deploy/cluster-netns.sh, after they
# set `script` (their name for messages), `profile` and `binary`: the link
# profiles (rate shaped by tbf, delay added by the edges' link emulation),
# and the checks that end a run as skipped (77) where namespaces cannot be
# made.

case "$profile" in
  lan)   rate=1000mbit; delay_ms=0.5 ;;
  wan)   rate=10mbit;   delay_ms=25 ;;
  paper) rate=30mbit;   delay_ms=3 ;;
  *) echo "$script: unknown profile '$profile' (lan, wan, paper)" >&2; exit 2 ;;
esac

skip() { echo "$script: skipped: $*" >&2; exit 77; }
[ "$(id -u)" -eq 0 ] || skip "needs root to create network namespaces"
command -v ip >/dev/null || skip "iproute2 (ip) is not installed"
[ -x "$binary" ] || { echo "$script: no ceco binary at $binary (build first)" >&2; exit 2; }
