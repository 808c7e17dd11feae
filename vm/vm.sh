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
#   KERNEL=6.1              6.1 (bookworm), 6.12 (bookworm-backports' newest
#                           6.12), 7.x (sid's newest); see kernel_setup
#   MIRROR=<derived>        Debian mirror for 6.12/7.x; default: the one the
#                           machine's apt configuration uses for its release
#   KLPTOP_CACHE=/var/cache/klptop   downloads and builds, keyed by kernel ABI
#   KVER=<resolved>         kernel ABI; default: what the suite's linux-image-amd64
#                           points to (the newest, for 6.12 and 7.x)
#   OUT=$KLPTOP_CACHE/out/$KVER/$MODE   files the guest hands back
#   RUN_NAME=$MODE          names the run's work directory: runs of one mode
#                           with different names can go on at once
#   MEM=1024 SMP=2 (7.x: 1) TIMEOUT=1800 APPEND="extra kernel args"
#   TCG=tcg,thread=multi    qemu -accel (6.12: tcg,thread=single)
#   TESTFLAGS="-test.run X"  extra flags for the guest test binary
#   SUMMARY=F TIMES=F       test: the counts of vmhost -summary, and each
#                           phase's seconds, written to F (vm/vmtest.sh)
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
TIMEOUT=${TIMEOUT:-1800}
APPEND=${APPEND:-}

T0=$SECONDS
log() { printf '\033[1;34m[vm %s %3ss]\033[0m %s\n' "$KERNEL" $((SECONDS - T0)) "$*" >&2; }
die() { log "error: $*"; exit 2; }
# Phase times also go to $TIMES, one "name seconds" line each, when set.
step() {
	local name=$1 t=$SECONDS
	shift
	"$@"
	log "$name: $((SECONDS - t))s"
	[[ -z ${TIMES:-} ]] || echo "$name $((SECONDS - t))" >> "$TIMES"
}

# ------------------------------------------------------------------ kernels
# Each kernel defines:
#   k_resolve   set KVER (ABI) and MM (major.minor of the source tree)
#   k_host_pkgs the Debian packages it needs installed on the host
#   k_fetch     put vmlinuz, config and modules.builtin* under $KDIR/boot,
#               the livepatch sources under $KDIR/src
#   HDR_FN      the kbuild tree the modules are built against
#   k_make      make against it (7.x: in the sid build root)
#   SMP_DEFAULT vCPUs (7.x under multi-threaded TCG needs 1, see the notes)
#   TCG_DEFAULT qemu -accel value, when not tcg,thread=multi
#   SUITE       the Debian suite, when it is not the machine's own
# 6.12 and 7.x come from other suites than the machine's own (see APT below):
# their image and source packages are downloaded and unpacked, never installed.
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
		k_make() { make -s -C "$(HDR_FN)" "$@"; }
		;;
	6.12)
		# bookworm-backports: built with bookworm's gcc-12 and pahole, so its
		# modules build on the host against unpacked (not installed) headers.
		# Multi-threaded TCG oopses here too ("int3" where the kernel patches
		# its text, e.g. rcu_gp_fqs_loop) under load: 2 vCPUs on one thread.
		SMP_DEFAULT=2 TCG_DEFAULT=tcg,thread=single
		SUITE=bookworm-backports
		k_resolve() {
			KVER=${KVER:-$(newest_abi '6\.12\.[0-9]+[^ ,]*-amd64')}
			MM=6.12
		}
		k_host_pkgs() { echo gcc-12 dwarves; }
		k_fetch() {
			local deb=$KDIR/deb f
			fetch_debs "linux-image-$KVER" "linux-headers-$KVER" \
				"linux-headers-${KVER%-amd64}-common" "linux-kbuild-${KVER%-amd64}"
			dpkg-deb --fsys-tarfile "$deb"/linux-image-"$KVER"_*.deb |
				tar -x -C "$KDIR" --wildcards './boot/*' \
					"./lib/modules/$KVER/modules.builtin*" "./lib/modules/$KVER/modules.order"
			for f in "$deb"/linux-headers-*.deb "$deb"/linux-kbuild-*.deb; do
				dpkg-deb -x "$f" "$KDIR/hdr"
			done
			# Its Makefile includes the -common tree by absolute path: make
			# that relative to where it was unpacked.
			sed -i 's|^include /usr/src/\(.*\)$|include $(dir $(lastword $(MAKEFILE_LIST)))../\1|' \
				"$(HDR_FN)/Makefile"
			rm -rf "$deb"
			fetch_source
		}
		HDR_FN() { echo "$KDIR/hdr/usr/src/linux-headers-$KVER"; }
		k_make() { make -s -C "$(HDR_FN)" "$@"; }
		;;
	7.x)
		# sid's newest: built with sid's compiler and kbuild (newer glibc than
		# the host's), so its modules build in a sid chroot. 1 vCPU: under
		# multi-threaded TCG with 2, flipping the livepatch static key oopses
		# (an emulation fault, not a kernel one).
		SMP_DEFAULT=1
		SUITE=sid
		k_resolve() {
			KVER=${KVER:-$(newest_abi '[0-9]+\.[0-9.]+[^ ,]*-amd64')}
			MM=$(cut -d. -f1,2 <<< "$KVER")
		}
		k_host_pkgs() { echo mmdebstrap debian-archive-keyring; }
		k_fetch() {
			local deb=$KDIR/deb x=$KDIR/deb/x
			# The image is split: vmlinuz in linux-binary, config and the
			# module lists in linux-base, both under /usr/lib/modules.
			fetch_debs "linux-binary-$KVER" "linux-base-$KVER"
			dpkg-deb -x "$deb"/linux-binary-"$KVER"_*.deb "$x"
			dpkg-deb -x "$deb"/linux-base-"$KVER"_*.deb "$x"
			x=$x/usr/lib/modules/$KVER
			mkdir -p "$KDIR/boot" "$KDIR/lib/modules/$KVER"
			cp "$x/vmlinuz" "$KDIR/boot/vmlinuz-$KVER"
			cp "$x/config" "$KDIR/boot/config-$KVER"
			cp "$x"/modules.{builtin,builtin.modinfo,order} "$KDIR/lib/modules/$KVER/"
			rm -rf "$deb"
			fetch_source
		}
		HDR_FN() { echo "/usr/src/linux-headers-$KVER"; }
		k_make() { sid_root_make -C "$(HDR_FN)" "$@"; }
		;;
	*) die "KERNEL=$KERNEL: one of 6.1, 6.12, 7.x (see kernel_setup)" ;;
	esac
	SMP=${SMP:-$SMP_DEFAULT}
	TCG=${TCG:-${TCG_DEFAULT:-tcg,thread=multi}}
}

# ---------------------------------------------------------------------- APT
# 6.12 and 7.x: apt-get and apt-cache on a private configuration under the
# cache, one per suite, with the Debian mirror the machine is configured with.
# The machine's own apt configuration is never changed.
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
SUITE=

apt_mirror() {
	local codename
	codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
	# The archive that serves the machine's own release (not -security).
	apt-get indextargets --format '$(REPO_URI) $(RELEASE)' 2> /dev/null |
		awk -v c="$codename" '$2 == c { print $1; exit }'
}

aptp() {
	local tool=$1 dir=$CACHE/apt/$SUITE
	shift
	# sid's index on the mirror may carry an expired Valid-Until.
	"$tool" -o Dir::Etc::SourceList="$dir/sources.list" -o Dir::Etc::SourceParts=/dev/null \
		-o Dir::State::Lists="$dir/lists" -o Dir::Cache="$dir/cache" \
		-o Dir::State::Status=/dev/null -o Acquire::Check-Valid-Until=false "$@"
}

private_apt() {
	local dir=$CACHE/apt/$SUITE stamp=$CACHE/apt/$SUITE/update.stamp
	mkdir -p "$dir/lists/partial" "$dir/cache/archives/partial"
	if [[ ! -s $dir/sources.list ]]; then
		MIRROR=${MIRROR:-$(apt_mirror)}
		[[ -n $MIRROR ]] || die "no Debian mirror in the machine's apt configuration: set MIRROR"
		printf 'deb [signed-by=%s] %s %s main\n' "$KEYRING" "$MIRROR" "$SUITE" > "$dir/sources.list"
	fi
	if [[ -z ${SKIP_APT:-} && -z $(find "$stamp" -mmin -1440 2> /dev/null) ]]; then
		aptp apt-get update -q >&2 && touch "$stamp"
	fi
}

# newest_abi RE: the newest kernel ABI the suite's linux-image-amd64 points to.
newest_abi() {
	aptp apt-cache show linux-image-amd64 2> /dev/null |
		grep -oE "linux-image-$1" | sed 's/^linux-image-//' | sort -uV | tail -1
}

# fetch_debs PKG...: download into $KDIR/deb from the private configuration.
fetch_debs() {
	local deb=$KDIR/deb
	mkdir -p "$deb" && chown _apt "$deb" 2> /dev/null || true
	(cd "$deb" && aptp apt-get download -q "$@" >&2)
}

# fetch_source: the livepatch samples and selftests out of linux-source-MM of
# the same package version as the image (~150 MB, deleted once unpacked).
fetch_source() {
	local v
	v=$(aptp apt-cache show "linux-image-$KVER" 2> /dev/null | sed -n 's/^Version: //p' | sort -V | tail -1)
	[[ -n $v ]] || die "no linux-image-$KVER in $SUITE"
	fetch_debs "linux-source-$MM=$v"
	dpkg-deb --fsys-tarfile "$KDIR"/deb/linux-source-"$MM"_*.deb |
		tar -xO "./usr/src/linux-source-$MM.tar.xz" |
		tar -xJ -C "$KDIR/src" --strip-components=1 "linux-source-$MM/samples/livepatch" \
			"linux-source-$MM/tools/testing/selftests/livepatch"
	rm -rf "$KDIR/deb"
}

# ------------------------------------------------------------ sid build root
# One sid chroot for every sid kernel, with the headers of each ABI it built
# for: mmdebstrap'd once (~25 s, ~450 MB), then apt-get in it for a new ABI.
SID_ROOT=

sid_root() {
	SID_ROOT=$CACHE/sid-root
	[[ -d $SID_ROOT/usr/src/linux-headers-$KVER ]] && return
	if [[ -x $SID_ROOT/usr/bin/apt-get ]]; then
		chroot "$SID_ROOT" apt-get update -q >&2
		chroot "$SID_ROOT" apt-get install -y -q --no-install-recommends "linux-headers-$KVER" >&2
	else
		MIRROR=${MIRROR:-$(apt_mirror)}
		rm -rf "$SID_ROOT.tmp"
		mmdebstrap --variant=minbase --keyring="$KEYRING" \
			--aptopt='Acquire::Check-Valid-Until "false"' \
			--include="make,linux-headers-$KVER" sid "$SID_ROOT.tmp" "$MIRROR" >&2
		mv "$SID_ROOT.tmp" "$SID_ROOT"
	fi
	log "sid build root: $(du -sh "$SID_ROOT" | cut -f1)"
}

# sid_root_make ARGS: make in the sid chroot, with M= outside it mapped in.
sid_root_make() {
	local args=() a m
	for a in "$@"; do
		case $a in
		M=*) m=${a#M=}; a=M=/build/lp ;;
		esac
		args+=("$a")
	done
	rm -rf "$SID_ROOT/build/lp" && mkdir -p "$SID_ROOT/build"
	cp -r "$m" "$SID_ROOT/build/lp"
	# A private mount namespace: the chroot's /proc goes away with it.
	unshare --mount --fork sh -c 'mount -t proc proc "$0/proc" && exec chroot "$0" make -s "$@"' \
		"$SID_ROOT" "${args[@]}"
	cp "$SID_ROOT"/build/lp/*.ko "$m/"
	rm -rf "$SID_ROOT/build/lp"
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
	[[ -z $SUITE ]] || private_apt
	k_resolve
	[[ -n $KVER ]] || die "cannot resolve the kernel ABI from linux-image-amd64${SUITE:+ in $SUITE}"
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
	[[ $KERNEL != 7.x ]] || sid_root
	k_make M="$m" -j"$(nproc)" modules >&2
	# The user-space helper of test-syscall.sh (6.12+), static: the guest
	# has no libc.
	d=$s/tools/testing/selftests/livepatch/test_klp-call_getpid.c
	[[ ! -e $d ]] || gcc -static -O2 -o "$m/test_klp-call_getpid" "$d"
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
		[[ ! -e $KDIR/modules/test_klp-call_getpid ]] ||
			cp "$KDIR/modules/test_klp-call_getpid" "$root/opt/selftests/"
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
			# The scale tests' thread holder, in C: static, as the
			# selftests' helper.
			gcc -static -O2 -pthread -o "$bin/klptop-threads" "$HERE/guest/threads.c"
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
		TEST_TIMEOUT=${TEST_TIMEOUT:-25m} SELFTESTS=${SELFTESTS:-}
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
	QEMU=(qemu-system-x86_64 -accel "$TCG" -cpu max -m "$MEM" -smp "$SMP"
		-nodefaults -no-reboot -display none
		-kernel "$KDIR/boot/vmlinuz-$KVER" -initrd "$RUN/initrd")
}

# Kernel messages go to ttyS0 with the console, interleaved with anything the
# guest prints; files come back on ttyS1, which carries nothing else. A soft
# lockup ends the guest at once rather than at the timeout, and the panic
# replays the whole kernel log at full verbosity (panic_print=32): loglevel=4
# keeps the lockup's stack off the console otherwise.
boot_batch() {
	local console=$RUN/console.log data=$RUN/data.raw rc
	rm -f "$console" "$data"
	qemu_cmd
	set +e
	timeout --foreground "$TIMEOUT" "${QEMU[@]}" \
		-serial stdio -chardev "file,id=data,path=$data" -serial chardev:data \
		-append "console=ttyS0 panic=-1 oops=panic softlockup_panic=1 panic_print=32 quiet loglevel=4 log_buf_len=4M $APPEND" \
		< /dev/null | sed -u 's/\r$//' | tee "$console"
	rc=${PIPESTATUS[0]}
	set -e
	((rc == 124)) && log "guest timed out after ${TIMEOUT}s"
	return 0
}

boot_interactive() {
	local saved="" rc=0
	qemu_cmd
	# mon:stdio: qemu puts the terminal in raw mode and restores it; Ctrl-A x
	# quits. But it keeps output processing on, and with ONLCR a bare line
	# feed from the guest's TUI renderer also returns the carriage: the screen
	# tears. The guest's tty and console send \r\n themselves.
	if [[ -t 0 ]]; then
		saved=$(stty -g)
		stty -onlcr
	fi
	"${QEMU[@]}" -serial mon:stdio \
		-append "console=ttyS0 panic=-1 quiet loglevel=3 $APPEND" || rc=$?
	if [[ -n $saved ]]; then stty "$saved"; fi
	return "$rc"
}

main() {
	mkdir -p "$CACHE"
	kernel_setup
	# Guests of different kernels may be prepared at once (make vmtest): one
	# apt-get at a time.
	exec 7> "$CACHE/apt.lock"
	flock 7
	step "packages" packages
	flock -u 7
	KDIR=$CACHE/kernel/$KVER
	RUN=$CACHE/run/$KVER/${RUN_NAME:-$MODE}
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
		step "boot + guest" boot_batch
		echo "==== vmhost report ($KERNEL, $KVER)"
		"$RUN/vmhost" -mode "$MODE" -kernel "$KERNEL" -summary "${SUMMARY:-/dev/null}" \
			-console "$RUN/console.log" -data "$RUN/data.raw" -out "$OUT" || rc=$?
		;;
	*)
		boot_interactive || rc=$?
		log "guest: $((SECONDS - t))s"
		;;
	esac
	log "total $((SECONDS - T0))s"
	return "$rc"
}
main "$@"; exit # one line: bash has read it all before main runs
