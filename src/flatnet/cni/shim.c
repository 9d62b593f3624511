/*
 * flatnet's CNI plugin, compiled: the same thin entry as plugin.py, for the
 * runtimes' hot path. A CPython start-up alone costs ~9-11 ms here; this
 * costs what an exec costs (~1 ms). It does exactly what plugin.py does:
 *
 *   VERSION      answered here;
 *   every verb   forwarded to the node agent on its unix socket as
 *                "KEY=VALUE\n" lines of the CNI_* environment, "\n", stdin;
 *                the reply is "<exit code>\n<stdout>";
 *   no agent     CNI error 11 (try again later), 50 for STATUS.
 *
 * `flatnet install-cni` compiles it with FLATNET_SOCKET set to the agent's
 * socket; a network config may still name another with "agentSocket".
 * All of the CNI protocol (validation, results, errors) lives in the agent.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#ifndef FLATNET_SOCKET
#define FLATNET_SOCKET "/run/flatnet/agent.sock"
#endif

extern char **environ;
static const char *SUPPORTED[] = {"0.4.0", "1.0.0", "1.1.0"};

struct buf { char *p; size_t n, cap; };

static void put(struct buf *b, const char *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        b->cap = (b->n + n + 1) * 2;
        b->p = realloc(b->p, b->cap);
        if (!b->p) { perror("flatnet"); exit(1); }
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

static void slurp(int fd, struct buf *b) {
    char chunk[65536];
    ssize_t r;
    while ((r = read(fd, chunk, sizeof chunk)) > 0 || (r < 0 && errno == EINTR))
        if (r > 0) put(b, chunk, (size_t)r);
}

/* The string value of top-level `key` in a JSON object, without parsing it
 * (first occurrence; same rule as plugin.py's _field). */
static int field(const char *json, const char *key, char *out, size_t cap) {
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\"", key);
    const char *p = strstr(json, pat);
    if (!p) return 0;
    p += strlen(pat);
    while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r') p++;
    if (*p++ != ':') return 0;
    while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r') p++;
    if (*p++ != '"') return 0;
    const char *end = strchr(p, '"');
    if (!end || (size_t)(end - p) >= cap) return 0;
    memcpy(out, p, (size_t)(end - p));
    out[end - p] = 0;
    return 1;
}

static const char *version_of(const char *json) {
    static char v[16];
    if (field(json, "cniVersion", v, sizeof v))
        for (size_t i = 0; i < sizeof SUPPORTED / sizeof *SUPPORTED; i++)
            if (!strcmp(v, SUPPORTED[i])) return SUPPORTED[i];
    return SUPPORTED[2];
}

static void json_string(const char *s) {
    putchar('"');
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') printf("\\%c", c);
        else if (c < 0x20) printf("\\u%04x", c);
        else putchar(c);
    }
    putchar('"');
}

static int fail(const char *json, int code, const char *path, const char *why) {
    char msg[4200];
    snprintf(msg, sizeof msg, "flatnet agent not reachable at %s: %s", path, why);
    printf("{\"cniVersion\": \"%s\", \"code\": %d, \"msg\": ", version_of(json), code);
    json_string(msg);
    printf(", \"details\": \"\"}");
    return 1;
}

int main(void) {
    struct buf in = {0}, req = {0}, resp = {0};
    put(&in, "", 0);
    slurp(0, &in);
    const char *cmd = getenv("CNI_COMMAND");
    if (cmd && !strcmp(cmd, "VERSION")) {
        printf("{\"cniVersion\": \"%s\", \"supportedVersions\": [\"0.4.0\", \"1.0.0\", \"1.1.0\"]}",
               version_of(in.p));
        return 0;
    }
    char path[4096];
    if (!field(in.p, "agentSocket", path, sizeof path) || !*path)
        snprintf(path, sizeof path, "%s", FLATNET_SOCKET);
    int unreachable = (cmd && !strcmp(cmd, "STATUS")) ? 50 : 11;

    for (char **e = environ; *e; e++)
        if (!strncmp(*e, "CNI_", 4)) { put(&req, *e, strlen(*e)); put(&req, "\n", 1); }
    put(&req, "\n", 1);
    put(&req, in.p, in.n);

    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof sa.sun_path) return fail(in.p, unreachable, path, "path too long");
    strcpy(sa.sun_path, path);
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0 || connect(s, (struct sockaddr *)&sa, sizeof sa) < 0)
        return fail(in.p, unreachable, path, strerror(errno));
    for (size_t off = 0; off < req.n;) {
        ssize_t w = write(s, req.p + off, req.n - off);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) return fail(in.p, unreachable, path, strerror(errno));
        off += (size_t)w;
    }
    shutdown(s, SHUT_WR);
    slurp(s, &resp);
    close(s);
    char *nl = resp.p ? memchr(resp.p, '\n', resp.n) : NULL;
    if (!nl) return fail(in.p, unreachable, path, "the agent closed the connection without an answer");
    int code = atoi(resp.p);
    fwrite(nl + 1, 1, resp.n - (size_t)(nl + 1 - resp.p), stdout);
    return code;
}
