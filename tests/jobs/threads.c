/* threads: a job with a second thread (not checkpointable), deterministic
 * output. usage: threads STEPS OUTPUT */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static volatile int stop;
static void *spin(void *arg) { (void)arg; while (!stop) usleep(10000); return 0; }

int main(int argc, char **argv) {
    int steps = argc > 1 ? atoi(argv[1]) : 30;
    FILE *out = fopen(argc > 2 ? argv[2] : "threads.out", "w");
    if (!out) { perror("fopen"); return 1; }
    pthread_t t;
    pthread_create(&t, 0, spin, 0);
    unsigned long x = 7;
    for (int i = 0; i < steps; i++) {
        x = x * 6364136223846793005UL + 1442695040888963407UL;
        fprintf(out, "%d %lu\n", i, x);
        fflush(out);
        usleep(100000);
    }
    stop = 1;
    pthread_join(t, 0);
    fclose(out);
    return 0;
}
