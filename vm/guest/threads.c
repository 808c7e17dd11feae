// SPDX-License-Identifier: GPL-2.0
/*
 * klptop-threads N: start N threads that sleep in pause(), say "ready N"
 * on stdout once the kernel counts them all, and sleep until killed. The
 * guest's scale tests use it for a server's thread count; built static on
 * the host (vm/vm.sh), since the guest has no libc.
 */
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void *sleeper(void *arg)
{
	(void)arg;
	for (;;)
		pause();
	return NULL;
}

/* The kernel's count of this process's threads. */
static long threads(void)
{
	char line[256];
	long n = -1;
	FILE *f = fopen("/proc/self/status", "r");

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "Threads: %ld", &n) == 1)
			break;
	fclose(f);
	return n;
}

int main(int argc, char **argv)
{
	pthread_attr_t attr;
	pthread_t t;
	long i, n;
	int err;

	if (argc != 2 || (n = strtol(argv[1], NULL, 10)) <= 0) {
		fprintf(stderr, "usage: klptop-threads N\n");
		return 2;
	}
	pthread_attr_init(&attr);
	/* The smallest stack: N of them must fit in a small guest. */
	pthread_attr_setstacksize(&attr, PTHREAD_STACK_MIN);
	for (i = 0; i < n; i++) {
		err = pthread_create(&t, &attr, sleeper, NULL);
		if (err) {
			fprintf(stderr, "klptop-threads: thread %ld of %ld: %s\n", i + 1, n, strerror(err));
			return 1;
		}
	}
	while (threads() < n + 1)
		usleep(10000);
	printf("ready %ld\n", n);
	fflush(stdout);
	for (;;)
		pause();
}
