#!/bin/sh
# `make demo`: klptop's live TUI on the serial console (the user's terminal),
# while a transition stalls on a kworker sleeping in a function the patch
# replaces, for STALL_SECONDS, then completes, then is undone. init runs this
# in its own session with the console as controlling tty.
stty rows "$ROWS" cols "$COLS" 2>/dev/null
export TERM=$GUEST_TERM
# Kernel messages on the console would scribble over the TUI.
dmesg -n 1

lp=/sys/kernel/livepatch/test_klp_callbacks_demo
block=/sys/module/test_klp_callbacks_busy/parameters/block_transition
wait_transition() {
	while [ "$(cat $lp/transition 2>/dev/null)" = 1 ]; do sleep 0.2; done
}

scenario() {
	sleep 4 # an idle system first
	echo "$(date +%T) modprobe test_klp_callbacks_busy block_transition=Y"
	modprobe test_klp_callbacks_busy block_transition=Y
	echo "$(date +%T) modprobe test_klp_callbacks_demo: the transition stalls"
	modprobe test_klp_callbacks_demo
	sleep "$STALL_SECONDS"
	echo "$(date +%T) unblock busymod_work_func"
	echo 0 > $block
	wait_transition
	echo "$(date +%T) patched"
	sleep 5
	echo "$(date +%T) disable the patch"
	echo 0 > $lp/enabled
	while [ -e $lp ]; do sleep 0.2; done
	rmmod test_klp_callbacks_demo test_klp_callbacks_busy
	echo "$(date +%T) unpatched and unloaded"
	sleep 5
	kill -TERM "$(cat /tmp/tui.pid)"
}

tui=/opt/klptop
if [ ! -x $tui ]; then
	echo "no klptop in this build; showing busybox top instead"
	sleep 2
	tui=top
fi
scenario > /tmp/scenario.log 2>&1 &
sh -c 'echo $$ > /tmp/tui.pid; exec "$0"' $tui
rc=$?
kill $! 2>/dev/null
clear
echo "klptop exited with status $rc. What happened:"
cat /tmp/scenario.log
exit $rc
