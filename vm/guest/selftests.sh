#!/bin/bash
# The kernel's own livepatch selftests against the modules in this guest: if
# these fail, the guest is broken, not klptop.
cd /opt/selftests || exit 1
tests=(${SELFTESTS:-test-*.sh})
pass=0 fail=0
for t in "${tests[@]}"; do
	echo "=== RUN   $t"
	s=$(date +%s)
	if bash "./$t"; then pass=$((pass + 1)); r=PASS; else fail=$((fail + 1)); r=FAIL; fi
	echo "--- $r: $t ($(($(date +%s) - s))s)"
done
[ $fail -eq 0 ]
