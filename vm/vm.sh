#!/usr/bin/env bash
# vm.sh: boot a livepatch-capable Debian kernel under qemu and run klptop in it.
#
# The development machine's own kernel has no livepatch, kprobes or modules, so
# klptop's end-to-end tests run in a guest: a stock Debian kernel (image fetched
# with apt-get download, never installed), the kernel's own livepatch sample and
# selftest modules built from linux-source, and a busybox initramfs.
#
# Usage: vm/vm.sh MODE
#   test       run the guest e2e tests (internal/vmtest/guest), report, exit 0/1
#   demo       klptop's live TUI on the serial console in this terminal, while
#              a scripted stalled transition plays out; then the guest powers off
#   shell      an interactive shell in the guest (Ctrl-A x quits qemu)
#   selftests  the kernel's own livepatch selftests, as a sanity check of the guest
#   prepare    only fetch and build what the guest needs (cached)
#
# Environment:
#   KERNEL=6.1              which kernel (see kernel_setup for adding more)
#   KLPTOP_CACHE=/var/cache/klptop   downloads and builds, keyed by kernel ABI
#   KVER=<resolved>         kernel ABI; default: what linux-image-amd64 points to
#   OUT=$KLPTOP_CACHE/out/$KVER/$MODE   files the guest hands back
#   MEM=1024 SMP=2 TIMEOUT=900 APPEND="extra kernel args"
#   TESTFLAGS="-test.run X"  extra flags for the guest test binary
#   SKIP_APT=1              do not touch apt (packages known to be present)
#   STALL_SECONDS=25        demo: how long the transition stays stuck
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
MODE=${1:-}
case $MODE in
test | demo | shell | selftests | prepare) ;;
*) sed -n '2,/^set -euo/p' "$0" | sed 's/^# \{0,1\}//;$d' >&2; exit 2 ;;
esac

KERNEL=${KERNEL:-6.1}
CACHE=${KLPTOP_CACHE:-/var/cache/klptop}
MEM=${MEM:-1024}
TIMEOUT=${TIMEOUT:-900}
APPEND=${APPEND:-}

T0=$SECONDS
log() { printf '\033[1;34m[vm %s %3ss]\033[0m %s\n' "$KERNEL" $((SECONDS - T0)) "$*" >&2; }
die() { log "error: $*"; exit 2; }
step() {
	local name=$1 t=$SECONDS
	shift
	"$@"
	log "$name: $((SECONDS - t))s"
}

# ------------------------------------------------------------------ kernels
# Each kernel defines:
#   k_resolve   set KVER (ABI) and MM (major.minor of the source tree)
#   k_host_pkgs the Debian packages it needs installed on the host
#   k_fetch     put vmlinuz, config and modules.builtin* under $KDIR/boot,
#               the livepatch sources under $KDIR/src
#   HDR         the kbuild tree the modules are built against
#   SMP_DEFAULT vCPUs (7.x under multi-threaded TCG needs 1, see the notes)
# Adding 6.12 (bookworm-backports) or 7.x (sid) means a private apt config for
# that suite (never the machine's) and, for sid, a sid build root for kbuild.
kernel_setup() {
	case $KERNEL in
	6.1)
		SMP_DEFAULT=2
		k_resolve() {
			# The ABI moves with security updates: follow the metapackage.
			KVER=${KVER:-$(apt-cache depends linux-image-amd64 2>/dev/null |
				sed -n 's/^ *Depends: linux-image-\(.*\)$/\1/p' | head -1)}
			MM=6.1
		}
		k_host_pkgs() { echo linux-source-6.1 "linux-headers-$KVER"; }
		k_fetch() {
			local deb=$KDIR/deb
			mkdir -p "$deb" && chown _apt "$deb" 2>/dev/null || true
			(cd "$deb" && apt-get download -q "linux-image-$KVER")
			dpkg-deb --fsys-tarfile "$deb"/linux-image-"$KVER"_*.deb |
				tar -x -C "$KDIR" --wildcards './boot/*' \
					"./lib/modules/$KVER/modules.builtin*" "./lib/modules/$KVER/modules.order"
			rm -rf "$deb"
			tar -xJf "/usr/src/linux-source-$MM.tar.xz" -C "$KDIR/src" --strip-components=1 \
				"linux-source-$MM/samples/livepatch" "linux-source-$MM/lib/livepatch" \
				"linux-source-$MM/tools/testing/selftests/livepatch"
		}
		HDR_FN() { echo "/usr/src/linux-headers-$KVER"; }
		;;
	*) die "KERNEL=$KERNEL: only 6.1 is set up (see kernel_setup)" ;;
	esac
	SMP=${SMP:-$SMP_DEFAULT}
}

# ----------------------------------------------------------------- packages
HOST_PKGS=(qemu-system-x86 busybox-static cpio kmod gcc make libc6-dev libelf-dev
	bc flex bison xz-utils tmux ncurses-base procps diffutils coreutils util-linux
	mawk sed grep bash libc-bin)

apt_lists_fresh() {
	local stamp=$CACHE/apt-update.stamp
	[[ -n $(find "$stamp" -mmin -1440 2>/dev/null) ]]
}

apt_update() {
	apt-get update -q && touch "$CACHE/apt-update.stamp"
}

packages() {
	export DEBIAN_FRONTEND=noninteractive
	# Lists older than a day (or none, on a fresh machine) cannot be trusted to
	# name the current kernel ABI.
	if [[ -z ${SKIP_APT:-} ]] && ! apt_lists_fresh; then apt_update; fi
	k_resolve
	[[ -n $KVER ]] || die "cannot resolve the kernel ABI from linux-image-amd64"
	local want missing
	want=("${HOST_PKGS[@]}" $(k_host_pkgs))
	# Not installed: unknown to dpkg, or known in any state but installed.
	mapfile -t missing < <(
		{ dpkg-query -W -f='${Package} ${db:Status-Status}\n' "${want[@]}" 2>/dev/null || true; } |
			awk -v want="${want[*]}" 'BEGIN { n = split(want, w, " "); for (i = 1; i <= n; i++) m[w[i]] = 1 }
				$2 == "installed" { delete m[$1] } END { for (p in m) print p }')
	if ((${#missing[@]})); then
		[[ -z ${SKIP_APT:-} ]] || die "SKIP_APT set but missing: ${missing[*]}"
		log "installing ${missing[*]}"
		apt-get install -y -q --no-install-recommends "${missing[@]}"
	fi
}

# ------------------------------------------------------------------- kernel
fetch_kernel() {
	[[ -e $KDIR/fetch.ok ]] && return
	rm -rf "$KDIR/boot" "$KDIR/lib" "$KDIR/src"
	mkdir -p "$KDIR/src"
	k_fetch
	[[ -e $KDIR/boot/vmlinuz-$KVER ]] || die "no vmlinuz-$KVER in the image package"
	touch "$KDIR/fetch.ok"
}

build_modules() {
	local m=$KDIR/modules s=$KDIR/src d
	[[ -e $m/build.ok ]] && return
	rm -rf "$m" && mkdir -p "$m"
	cp "$s"/samples/livepatch/*.c "$m/"
	# 6.1 keeps the selftest modules in lib/livepatch, later trees next to
	# the selftests.
	for d in lib/livepatch tools/testing/selftests/livepatch/test_modules; do
		[[ -d $s/$d ]] && cp "$s/$d"/*.c "$m/"
	done
	# One Kbuild for all of them: the in-tree Makefiles are gated on
	# CONFIG_SAMPLE_LIVEPATCH / CONFIG_TEST_LIVEPATCH, which Debian leaves off.
	(cd "$m" && for f in *.c; do echo "obj-m += ${f%.c}.o"; done > Kbuild)
	make -s -C "$(HDR_FN)" M="$m" -j"$(nproc)" modules >&2
	log "$(ls "$m"/*.ko | wc -l) livepatch modules built"
	touch "$m/build.ok"
}

# --------------------------------------------------------------- initramfs
# The base image (tools, modules) is cached per kernel; it is rebuilt when the
# function that makes it changes. The per-run overlay (init, scripts, klptop,
# test binary) is a second cpio appended to it: the kernel unpacks both.
copy_bin() {
	local root=$1 b lib
	shift
	for b in "$@"; do
		b=$(command -v "$b") || die "no $b on the host"
		install -D -m755 "$b" "$root/usr/bin/${b##*/}"
		for lib in $(ldd "$b" 2>/dev/null | grep -o '/[^ ]*'); do
			[[ -e $root$lib ]] || install -D "$lib" "$root$lib"
		done
	done
}

build_base() {
	local root=$KDIR/base m=/lib/modules/$KVER app
	rm -rf "$root" && mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,run,opt,etc,root}
	cp /bin/busybox "$root/bin/busybox"
	for app in $(/bin/busybox --list); do
		[[ -e $root/bin/$app ]] || ln -s busybox "$root/bin/$app"
	done
	# The kernel's selftests need GNU tools and bash; busybox alone is not enough.
	copy_bin "$root" bash comm stat mktemp date diff sysctl dmesg kmod sed grep mawk getconf tmux
	for app in modprobe modinfo insmod rmmod lsmod depmod; do ln -sf kmod "$root/usr/bin/$app"; done
	ln -sf mawk "$root/usr/bin/awk"
	# Where busybox and GNU both have a tool, GNU's wins under either path:
	# the selftests call some by absolute path and parse their output.
	for app in "$root"/usr/bin/*; do
		app=${app##*/}
		[[ -L $root/bin/$app ]] && ln -sf "/usr/bin/$app" "$root/bin/$app"
	done
	# tmux needs a terminfo entry for its own TERM (screen) and the client's.
	mkdir -p "$root/usr/share/terminfo"
	cp -r /lib/terminfo/. "$root/usr/share/terminfo/"
	# and a UTF-8 locale, or it refuses to start.
	mkdir -p "$root/usr/lib/locale"
	cp -r /usr/lib/locale/C.utf8 "$root/usr/lib/locale/"
	echo 'root:x:0:0:root:/root:/bin/sh' > "$root/etc/passwd"
	echo 'root:x:0:' > "$root/etc/group"

	install -D -m644 -t "$root$m/extra" "$KDIR"/modules/*.ko
	cp "$KDIR$m"/modules.{builtin,builtin.modinfo,order} "$root$m/"
	depmod -b "$root" "$KVER"
	mkdir -p "$root$m/build" # later selftests check that $KDIR exists
	cp -r "$KDIR/src/tools/testing/selftests/livepatch" "$root/opt/selftests"
	if [[ -d $root/opt/selftests/test_modules ]]; then
		cp "$KDIR"/modules/test_klp_*.ko "$root/opt/selftests/test_modules/"
	fi
	(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) > "$KDIR/base.cpio.gz.tmp"
	mv "$KDIR/base.cpio.gz.tmp" "$KDIR/base.cpio.gz"
	rm -rf "$root"
}

base_initramfs() {
	local sum
	sum=$(declare -f build_base copy_bin | sha256sum | cut -c1-16)
	[[ -e $KDIR/base.cpio.gz && $(cat "$KDIR/base.sum" 2>/dev/null) == "$sum" ]] && return
	build_base
	echo "$sum" > "$KDIR/base.sum"
	log "base initramfs: $(du -h "$KDIR/base.cpio.gz" | cut -f1)"
}

# Go binaries, built static: the guest has no libc for them.
build_go() {
	local bin=$RUN/bin
	mkdir -p "$bin"
	rm -f "$bin"/*
	(
		cd "$ROOT"
		if [[ -d cmd/klptop ]]; then
			CGO_ENABLED=0 go build -trimpath -o "$bin/klptop" ./cmd/klptop
		else
			log "warning: no ./cmd/klptop yet: the guest has no klptop"
		fi
		if [[ $MODE == test ]]; then
			CGO_ENABLED=0 go test -c -tags guest -o "$bin/guest.test" ./internal/vmtest/guest
		fi
		go build -o "$RUN/vmhost" ./internal/vmtest/cmd/vmhost
	)
}

overlay() {
	local root=$RUN/overlay
	rm -rf "$root" && mkdir -p "$root/opt"
	install -m755 "$HERE/guest/init" "$root/init"
	install -m755 "$HERE"/guest/*.sh "$root/opt/"
	cp "$RUN"/bin/* "$root/opt/" 2>/dev/null || true
	local rows=40 cols=120 v
	if [[ $MODE == demo || $MODE == shell ]] && [[ -t 0 ]]; then
		read -r rows cols < <(stty size)
	fi
	# The run's settings, sourced by init: the kernel command line cannot carry
	# spaces, and unknown dotted parameters never reach init's environment.
	MODE=$MODE ROWS=$rows COLS=$cols GUEST_TERM=${TERM:-vt100} \
		STALL_SECONDS=${STALL_SECONDS:-25} TESTFLAGS=${TESTFLAGS:-} \
		TEST_TIMEOUT=${TEST_TIMEOUT:-12m} SELFTESTS=${SELFTESTS:-}
	for v in MODE ROWS COLS GUEST_TERM STALL_SECONDS TESTFLAGS TEST_TIMEOUT SELFTESTS; do
		printf "%s='%s'\n" "$v" "${!v//\'/}"
	done > "$root/opt/env"
	# Uncompressed: the Go binaries barely compress and gzip would cost seconds.
	(cd "$root" && find . | cpio -o -H newc --quiet) > "$RUN/overlay.cpio"
	# An uncompressed archive after a compressed one must start 4-byte aligned;
	# the kernel skips the zero padding.
	local pad=$(((4 - $(stat -c %s "$KDIR/base.cpio.gz") % 4) % 4))
	{ cat "$KDIR/base.cpio.gz"; head -c "$pad" /dev/zero; cat "$RUN/overlay.cpio"; } > "$RUN/initrd"
	rm -rf "$root" "$RUN/overlay.cpio"
}

# --------------------------------------------------------------------- boot
qemu_cmd() {
	QEMU=(qemu-system-x86_64 -accel tcg,thread=multi -cpu max -m "$MEM" -smp "$SMP"
		-nodefaults -no-reboot -display none
		-kernel "$KDIR/boot/vmlinuz-$KVER" -initrd "$RUN/initrd")
}

# Kernel messages go to ttyS0 with the console, interleaved with anything the
# guest prints; files come back on ttyS1, which carries nothing else.
boot_batch() {
	local console=$RUN/console.log data=$RUN/data.raw rc
	rm -f "$console" "$data"
	qemu_cmd
	set +e
	timeout --foreground "$TIMEOUT" "${QEMU[@]}" \
		-serial stdio -chardev "file,id=data,path=$data" -serial chardev:data \
		-append "console=ttyS0 panic=-1 oops=panic quiet loglevel=4 $APPEND" \
		< /dev/null | sed -u 's/\r$//' | tee "$console"
	rc=${PIPESTATUS[0]}
	set -e
	((rc == 124)) && log "guest timed out after ${TIMEOUT}s"
	return 0
}

boot_interactive() {
	qemu_cmd
	# mon:stdio: qemu puts the terminal in raw mode and restores it; Ctrl-A x quits.
	"${QEMU[@]}" -serial mon:stdio \
		-append "console=ttyS0 panic=-1 quiet loglevel=3 $APPEND"
}

main() {
	mkdir -p "$CACHE"
	kernel_setup
	step "packages" packages
	KDIR=$CACHE/kernel/$KVER
	RUN=$CACHE/run/$KVER/$MODE
	OUT=${OUT:-$CACHE/out/$KVER/$MODE}
	mkdir -p "$KDIR" "$RUN"
	log "kernel $KVER, cache $CACHE"
	# Concurrent runs share the per-kernel cache: build it under a lock.
	exec 9> "$KDIR/lock"
	flock 9
	step "fetch kernel" fetch_kernel
	step "build modules" build_modules
	step "base initramfs" base_initramfs
	flock -u 9
	[[ $MODE == prepare ]] && return 0
	exec 8> "$RUN/lock"
	flock -n 8 || die "another $MODE run for $KVER is going on ($RUN)"
	step "go build" build_go
	step "overlay" overlay
	local t=$SECONDS rc=0
	case $MODE in
	test | selftests)
		boot_batch
		log "boot + guest: $((SECONDS - t))s"
		"$RUN/vmhost" -mode "$MODE" -console "$RUN/console.log" -data "$RUN/data.raw" -out "$OUT" || rc=$?
		;;
	*)
		boot_interactive || rc=$?
		log "guest: $((SECONDS - t))s"
		;;
	esac
	log "total $((SECONDS - T0))s"
	return "$rc"
}
main "$@"
exit
