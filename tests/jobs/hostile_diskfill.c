/* hostile_diskfill: writes 1 MiB blocks to a file in its scratch
 * directory with raw calls until a write fails; prints how many bytes
 * were written and why it stopped. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static char block[1 << 20];

int main(void) {
    signal(SIGXFSZ, SIG_IGN);
    memset(block, 'x', sizeof block);
    long fd = syscall(SYS_open, "/tmp/fill", O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) { printf("open: %s\n", strerror(errno)); return 1; }
    long long total = 0;
    for (;;) {
        long n = syscall(SYS_write, fd, block, sizeof block);
        if (n <= 0) {
            const char *why = n == 0 ? "zero" : errno == ENOSPC ? "ENOSPC" : errno == EFBIG ? "EFBIG" : strerror(errno);
            printf("wrote %lld bytes, then %s\n", total, why);
            return 0;
        }
        total += n;
    }
}
