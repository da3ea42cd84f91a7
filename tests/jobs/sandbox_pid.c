/* sandbox_pid: prints its pid, then STEPS steps 100 ms apart, then its pid
 * again (a job checkpointed and moved in between must see the same pid).
 * usage: sandbox_pid STEPS */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv) {
    int steps = argc > 1 ? atoi(argv[1]) : 50;
    printf("pid %d\n", (int)getpid());
    fflush(stdout);
    for (int i = 0; i < steps; i++) {
        usleep(100000);
        printf("step %d\n", i);
        fflush(stdout);
    }
    printf("pid %d\n", (int)getpid());
    return 0;
}
