// Package guest holds klptop's end-to-end tests. They need a kernel with
// livepatch, kprobes and the kernel's own livepatch modules, so they are built
// with the "guest" tag and run only inside the qemu guest that vm/vm.sh boots
// (`make vmtest`), where they drive the real klptop binary and check what it
// saw against the kernel's own account: dmesg, sysfs and /proc.
package guest
