/* Call a model from C: ./infer URL TOKEN calls test/tensors three times, as a time
 * loop would, on one connection, and prints its last answer (3 5 8). */
#include <stdio.h>

int oip_infer_fp32(const char *url, const char *token, const float *in, long n,
                   float *out, long max_out);
void oip_close(void);

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: %s URL TOKEN\n", argv[0]); return 2; }
    float in[3] = {1.5f, 2.5f, 4.0f}, out[3];
    for (int step = 0; step < 3; step++) {  /* as a time loop would: one connection */
        int got = oip_infer_fp32(argv[1], argv[2], in, 3, out, 3);
        if (got != 3) { fprintf(stderr, "inference failed (%d)\n", got); return 1; }
    }
    printf("%g %g %g\n", out[0], out[1], out[2]);
    oip_close();
    return 0;
}
