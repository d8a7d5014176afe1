/* Call a model from C: ./infer URL TOKEN prints twice 1.5, 2.5, 4 (test/tensors). */
#include <stdio.h>

int oip_infer_fp32(const char *url, const char *token, const float *in, long n,
                   float *out, long max_out);

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: %s URL TOKEN\n", argv[0]); return 2; }
    float in[3] = {1.5f, 2.5f, 4.0f}, out[3];
    int got = oip_infer_fp32(argv[1], argv[2], in, 3, out, 3);
    if (got != 3) { fprintf(stderr, "inference failed (%d)\n", got); return 1; }
    printf("%g %g %g\n", out[0], out[1], out[2]);
    return 0;
}
