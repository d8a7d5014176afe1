/* A thin Open Inference Protocol client in C (libcurl): one FP32 vector in, one out.
 *
 *   int oip_infer_fp32(const char *url, const char *token,
 *                      const float *in, long n, float *out, long max_out);
 *
 * POSTs {"inputs": [{"name": "input", "shape": [n], "datatype": "FP32", "data": [...]}]}
 * to url (e.g. http://127.0.0.1:8000/v2/models/test/tensors/infer) with
 * "Authorization: Bearer <token>", and reads the first output's "data" into out.
 * Returns the number of values read, or minus the HTTP status (-1: no answer); on an
 * error the protocol's {"error": "..."} body is printed on stderr.
 * Each thread keeps one connection open between its calls (HTTP keep-alive), so a time
 * step that calls the model pays no connection set-up; oip_close() ends the calling
 * thread's. Fortran calls it through ISO_C_BINDING (infer.f90).
 */
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct buffer { char *data; size_t size; };

static _Thread_local CURL *session = NULL;  /* this thread's handle and its connection */

void oip_close(void) {
    if (session != NULL) curl_easy_cleanup(session);
    session = NULL;
}

static size_t collect(char *chunk, size_t size, size_t count, void *user) {
    struct buffer *buf = user;
    size_t more = size * count;
    char *grown = realloc(buf->data, buf->size + more + 1);
    if (grown == NULL) return 0;
    buf->data = grown;
    memcpy(buf->data + buf->size, chunk, more);
    buf->size += more;
    buf->data[buf->size] = '\0';
    return more;
}

static char *request_body(const float *in, long n) {
    size_t cap = 128 + (size_t)n * 20;
    char *body = malloc(cap);
    if (body == NULL) return NULL;
    size_t at = (size_t)snprintf(body, cap, "{\"inputs\": [{\"name\": \"input\", \"shape\": "
                                 "[%ld], \"datatype\": \"FP32\", \"data\": [", n);
    for (long i = 0; i < n; i++)
        at += (size_t)snprintf(body + at, cap - at, i ? ", %.9g" : "%.9g", in[i]);
    snprintf(body + at, cap - at, "]}]}");
    return body;
}

static long read_data(const char *json, float *out, long max_out) {
    const char *at = strstr(json, "\"data\"");
    if (at == NULL || (at = strchr(at, '[')) == NULL) return 0;
    long count = 0;
    for (at++; count < max_out && *at != ']' && *at != '\0';) {
        char *end;
        double value = strtod(at, &end);
        if (end == at) break;
        out[count++] = (float)value;
        at = end + strspn(end, ", ");
    }
    return count;
}

int oip_infer_fp32(const char *url, const char *token, const float *in, long n,
                   float *out, long max_out) {
    if (session == NULL) session = curl_easy_init();
    else curl_easy_reset(session);  /* the options go; the open connection stays */
    CURL *curl = session;
    char *body = request_body(in, n);
    char auth[1024];
    struct buffer answer = {NULL, 0};
    long status = -1;
    if (curl == NULL || body == NULL) { free(body); return -1; }
    snprintf(auth, sizeof auth, "Authorization: Bearer %s", token);
    struct curl_slist *headers = curl_slist_append(NULL, "Content-Type: application/json");
    headers = curl_slist_append(headers, auth);
    curl_easy_setopt(curl, CURLOPT_URL, url);
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, &answer);
    if (curl_easy_perform(curl) == CURLE_OK)
        curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
    long count = -status;
    if (status == 200 && answer.data != NULL)
        count = read_data(answer.data, out, max_out);
    else if (answer.data != NULL)
        fprintf(stderr, "HTTP %ld: %s\n", status, answer.data);
    curl_slist_free_all(headers);
    free(answer.data);
    free(body);
    return (int)count;
}
