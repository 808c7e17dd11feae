package probes

// The generated loader and object are committed so that building klptop
// needs no clang. Compile with the Debian clang-14 toolchain to keep the
// committed object reproducible.
//go:generate go tool bpf2go -cc clang-14 -strip llvm-strip-14 -target amd64 -go-package probes -output-stem klptop klptop ../../bpf/klptop.bpf.c -- -I../../bpf -I../../bpf/include -O2 -Wall -Werror
