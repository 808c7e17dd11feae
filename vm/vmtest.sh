#!/usr/bin/env bash
# vmtest.sh: klptop's guest tests on each of KERNELS (make vmtest). Every
# kernel's guest is prepared first, all at once (downloads, module builds);
# then VMTEST_JOBS guests run at a time: 1, because the tests measure the
# kernel in real time and two software-emulated guests on two cores starve
# each other's timing. Each guest's output goes to its own log under
# $KLPTOP_CACHE/logs; this prints each run's report (failing tests' own
# output, skips) and ends with one table: per kernel, the tests, where the
# time went, and the result.
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${KLPTOP_CACHE:-/var/cache/klptop}
KERNELS=${KERNELS:-6.1 6.12 7.x}
JOBS=${VMTEST_JOBS:-1}
LOGS=$CACHE/logs
mkdir -p "$LOGS"
export KLPTOP_CACHE=$CACHE

logname() { echo "$LOGS/vmtest-$1${RUN_NAME:+-$RUN_NAME}.log"; }

t0=$SECONDS
for k in $KERNELS; do rm -f "$(logname "$k")".{result,summary,times}; done
# shellcheck disable=SC2086
printf '%s\n' $KERNELS | xargs -P 3 -I{} sh -c '
	log=$0/prepare-{}.log
	KERNEL={} "$1/vm.sh" prepare > "$log" 2>&1 || { echo "vmtest {}: prepare failed:"; cat "$log"; }' "$LOGS" "$HERE"
prepare=$((SECONDS - t0))

one() {
	local k=$1 log t=$SECONDS r=ok
	log=$(logname "$k")
	echo "vmtest $k: started, log in $log"
	SUMMARY=$log.summary TIMES=$log.times KERNEL=$k "$HERE/vm.sh" test > "$log" 2>&1 || r=FAIL
	echo "$r $((SECONDS - t))" > "$log.result"
	echo "==================== vmtest $k: $r"
	if grep -q '^==== vmhost report' "$log"; then
		sed -n '/^==== vmhost report/,$p' "$log"
	else
		echo "(no report from the guest run: the last 100 lines of its log)"
		tail -n 100 "$log"
	fi
}
export -f one logname
export HERE LOGS RUN_NAME
# shellcheck disable=SC2086
printf '%s\n' $KERNELS | xargs -P "$JOBS" -I{} bash -c 'one {}'

fail=0
echo
echo "vmtest: prepare (all kernels at once) ${prepare}s, all $((SECONDS - t0))s"
printf '  %-6s %-6s %5s %6s %6s %5s %9s %9s %6s\n' kernel result tests passed failed skips "go build" "guest" total
for k in $KERNELS; do
	log=$(logname "$k")
	r=FAIL s=- n=- p=- f=- sk=- gb=- g=-
	[[ -s $log.result ]] && read -r r s < "$log.result"
	[[ -s $log.summary ]] && read -r n p f sk < "$log.summary"
	if [[ -s $log.times ]]; then
		gb=$(sed -n 's/^go build //p' "$log.times")s
		g=$(sed -n 's/^boot + guest //p' "$log.times")s
	fi
	printf '  %-6s %-6s %5s %6s %6s %5s %9s %9s %5ss\n' "$k" "$r" "$n" "$p" "$f" "$sk" "$gb" "$g" "$s"
	[[ $r == ok ]] || fail=1
done
exit $fail
