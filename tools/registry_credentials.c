/* Registry credentials as docker and podman find them: docker's config.json (credHelpers[host], credsStore,
 * auths), then the containers auth.json of podman, skopeo and buildah (same shape). A credential helper runs
 * as docker runs it: `docker-credential-<name> get` from PATH, no shell, the server URL on stdin, JSON on
 * stdout, bounded in time and output. An identity token (an OAuth2 refresh token: `az acr login` stores one,
 * as auths.<host>.identitytoken or a helper's Username "<token>") is handed on as is, for the token endpoint.
 * Secrets are wiped once encoded and never appear in messages. */
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "image.h"

extern char **environ;

/* docker gives its helpers no deadline; a helper waiting on a locked keyring must not hang a pull forever. */
#define HELPER_TIMEOUT_MS 30000
#define HELPER_OUTPUT_MAX (64 * 1024)
#define HELPER_STDERR_KEEP 4096
/* What docker-credential-helpers print (and docker's client matches) when a store has nothing for the server.
 */
#define HELPER_NOT_FOUND "credentials not found in native keychain"
#define HELPER_TOKEN_USERNAME "<token>"
#define DOCKER_HUB_SERVER "https://index.docker.io/v1/"

static void wipe_free(char *s, size_t len)
{
    if (s) {
        explicit_bzero(s, len);
        free(s);
    }
}

char *registry_basic_credentials(const char *username, const char *password)
{
    char *up;
    if (asprintf(&up, "%s:%s", username, password) < 0)
        return NULL;
    size_t n = strlen(up);
    char *out = malloc(4 * ((n + 2) / 3) + 1);
    if (out)
        EVP_EncodeBlock((unsigned char *)out, (const unsigned char *)up, (int)n);
    wipe_free(up, n);
    return out;
}

/* ---- Running a helper ---- */

/* Output kept from one of the helper's streams: at most max bytes, the rest drained or refused. */
struct helper_output {
    char *data;
    size_t len;
    size_t max;
    bool overflow;
};

struct helper_run {
    const char *program; /* docker-credential-<name> */
    const char *origin;  /* the setting that named it, for messages */
    pid_t pid;
    int in, out, err; /* our ends of its stdin, stdout, stderr */
    struct helper_output output, errors;
    bool timed_out;
    int status;
};

static int helper_spawn(struct helper_run *h, const char *host, struct vs_error *err)
{
    int in[2], out[2], er[2];
    if (pipe2(in, O_CLOEXEC) < 0)
        return vs_fail(err, -errno, "registry '%s': pipe: %s", host, strerror(errno));
    if (pipe2(out, O_CLOEXEC) < 0 || pipe2(er, O_CLOEXEC) < 0) {
        int e = errno;
        close(in[0]), close(in[1]);
        return vs_fail(err, -e, "registry '%s': pipe: %s", host, strerror(e));
    }
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, in[0], STDIN_FILENO);
    posix_spawn_file_actions_adddup2(&fa, out[1], STDOUT_FILENO);
    posix_spawn_file_actions_adddup2(&fa, er[1], STDERR_FILENO);
    /* The tool ignores SIGPIPE; an ignored signal stays ignored across exec, so give the helper the default.
     */
    posix_spawnattr_t attr;
    posix_spawnattr_init(&attr);
    sigset_t def, none;
    sigemptyset(&def);
    sigaddset(&def, SIGPIPE);
    sigemptyset(&none);
    posix_spawnattr_setsigdefault(&attr, &def);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK);
    char *argv[] = {(char *)h->program, "get", NULL};
    int rc = posix_spawnp(&h->pid, h->program, &fa, &attr, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    close(in[0]), close(out[1]), close(er[1]);
    h->in = in[1], h->out = out[0], h->err = er[0];
    if (rc != 0) {
        close(h->in), close(h->out), close(h->err);
        h->in = h->out = h->err = -1;
        if (rc == ENOENT)
            return vs_fail(err, -ENOENT, "registry '%s': credential helper %s (%s) not found in PATH", host,
                           h->program, h->origin);
        return vs_fail(err, -rc, "registry '%s': cannot run credential helper %s (%s): %s", host, h->program,
                       h->origin, strerror(rc));
    }
    return 0;
}

/* Writes the server URL and a newline on the helper's stdin, then closes it. A helper that exits without
 * reading gives EPIPE: its exit status tells the story, so SIGPIPE is held back for this thread meanwhile. */
static void helper_send(struct helper_run *h, const char *server)
{
    sigset_t pipe_set, old;
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_set, &old);
    char line[512];
    int n = snprintf(line, sizeof(line), "%s\n", server);
    size_t done = 0;
    while (n > 0 && done < (size_t)n) {
        ssize_t w = write(h->in, line + done, (size_t)n - done);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            break;
        done += (size_t)w;
    }
    struct timespec zero = {0, 0};
    while (sigtimedwait(&pipe_set, NULL, &zero) == SIGPIPE)
        ;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    close(h->in);
    h->in = -1;
}

/* Reads what is ready on fd into o; returns false at end of stream. */
static bool helper_read(int fd, struct helper_output *o)
{
    char buf[4096];
    ssize_t n = read(fd, buf, sizeof(buf));
    if (n < 0 && (errno == EINTR || errno == EAGAIN))
        return true;
    if (n <= 0)
        return false;
    size_t take = (size_t)n;
    if (o->len + take > o->max) {
        o->overflow = true;
        take = o->max - o->len;
    }
    if (take) {
        char *d = realloc(o->data, o->len + take + 1);
        if (!d) {
            o->overflow = true;
            return true;
        }
        o->data = d;
        memcpy(o->data + o->len, buf, take);
        o->len += take;
        o->data[o->len] = '\0';
    }
    return true;
}

static long ms_since(const struct timespec *t0)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (now.tv_sec - t0->tv_sec) * 1000L + (now.tv_nsec - t0->tv_nsec) / 1000000L;
}

/* Collects stdout and stderr until both end, stdout overflows or the deadline passes (then kills the helper),
 * and reaps it. */
static void helper_collect(struct helper_run *h)
{
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    bool out_open = true, err_open = true;
    while ((out_open || err_open) && !h->output.overflow) {
        long left = HELPER_TIMEOUT_MS - ms_since(&t0);
        if (left <= 0) {
            h->timed_out = true;
            break;
        }
        struct pollfd p[2] = {{out_open ? h->out : -1, POLLIN, 0}, {err_open ? h->err : -1, POLLIN, 0}};
        int r = poll(p, 2, (int)left);
        if (r < 0 && errno != EINTR)
            break;
        if (r <= 0)
            continue;
        if (p[0].revents && !helper_read(h->out, &h->output))
            out_open = false;
        if (p[1].revents && !helper_read(h->err, &h->errors))
            err_open = false;
    }
    close(h->out), close(h->err);
    /* A helper may close its streams and linger: it has until the same deadline to exit. */
    bool reaped = false;
    while (!reaped && !h->timed_out && !h->output.overflow) {
        pid_t r = waitpid(h->pid, &h->status, WNOHANG);
        if (r == h->pid || (r < 0 && errno != EINTR)) {
            reaped = true;
        } else if (ms_since(&t0) >= HELPER_TIMEOUT_MS) {
            h->timed_out = true;
        } else {
            struct timespec tick = {0, 10 * 1000000L};
            nanosleep(&tick, NULL);
        }
    }
    if (!reaped) {
        kill(h->pid, SIGKILL);
        while (waitpid(h->pid, &h->status, 0) < 0 && errno == EINTR)
            ;
    }
}

/* The first line of what the helper said about its failure (stderr, else stdout: the helpers' protocol prints
 * errors there), at most 200 characters. */
static void helper_complaint(const struct helper_run *h, char *out, size_t cap)
{
    const struct helper_output *o = h->errors.len ? &h->errors : &h->output;
    const char *s = o->data ? o->data : "";
    while (*s == ' ' || *s == '\n' || *s == '\r' || *s == '\t')
        s++;
    int n = (int)strcspn(s, "\r\n");
    snprintf(out, cap, "%.*s", n > 200 ? 200 : n, s);
}

static bool helper_said_not_found(const struct helper_run *h)
{
    return (h->output.data && strstr(h->output.data, HELPER_NOT_FOUND)) ||
           (h->errors.data && strstr(h->errors.data, HELPER_NOT_FOUND));
}

/* Turns a helper's JSON answer into basic credentials or an identity token (both NULL: none stored). */
static int helper_answer(const struct helper_run *h, const char *host, char **basic, char **identity_token,
                         struct vs_error *err)
{
    json_t *j = json_loadb(h->output.data ? h->output.data : "", h->output.len, 0, NULL);
    const char *user = json_string_value(json_object_get(j, "Username"));
    const char *secret = json_string_value(json_object_get(j, "Secret"));
    int rc = 0;
    if (!j || !json_is_object(j))
        rc = vs_fail(err, -EIO, "registry '%s': credential helper %s did not answer with a JSON object", host,
                     h->program);
    else if (user && strcmp(user, HELPER_TOKEN_USERNAME) == 0) {
        if (secret && secret[0] && !(*identity_token = strdup(secret)))
            rc = vs_fail(err, -ENOMEM, "out of memory");
    } else if ((user && user[0]) || (secret && secret[0]))
        *basic = registry_basic_credentials(user ? user : "", secret ? secret : "");
    json_decref(j);
    return rc;
}

/* What docker names a registry when it asks a helper: the host, or the index URL for Docker Hub. */
static const char *helper_server_url(const char *host)
{
    return strcmp(host, "docker.io") == 0 ? DOCKER_HUB_SERVER : host;
}

/* Runs docker-credential-<name> get for host; origin says which setting chose it, for messages. */
static int helper_credentials(const char *name, const char *host, const char *origin, char **basic,
                              char **identity_token, struct vs_error *err)
{
    if (strchr(name, '/'))
        return vs_fail(err, -EINVAL, "registry '%s': credential helper name '%s' (%s) contains '/'", host,
                       name, origin);
    char program[256];
    if ((size_t)snprintf(program, sizeof(program), "docker-credential-%s", name) >= sizeof(program))
        return vs_fail(err, -EINVAL, "registry '%s': credential helper name (%s) too long", host, origin);
    struct helper_run h = {.program = program,
                           .origin = origin,
                           .in = -1,
                           .output = {.max = HELPER_OUTPUT_MAX},
                           .errors = {.max = HELPER_STDERR_KEEP}};
    int rc = helper_spawn(&h, host, err);
    if (rc < 0)
        return rc;
    helper_send(&h, helper_server_url(host));
    helper_collect(&h);
    char said[256];
    helper_complaint(&h, said, sizeof(said));
    if (h.timed_out)
        rc = vs_fail(err, -ETIMEDOUT,
                     "registry '%s': credential helper %s (%s) gave no answer in %d s, killed", host, program,
                     origin, HELPER_TIMEOUT_MS / 1000);
    else if (h.output.overflow)
        rc = vs_fail(err, -EFBIG, "registry '%s': credential helper %s (%s) answered more than %d bytes",
                     host, program, origin, HELPER_OUTPUT_MAX);
    else if (WIFSIGNALED(h.status))
        rc = vs_fail(err, -EIO, "registry '%s': credential helper %s (%s) was killed by signal %d%s%s", host,
                     program, origin, WTERMSIG(h.status), said[0] ? ": " : "", said);
    else if (WEXITSTATUS(h.status) != 0 && helper_said_not_found(&h))
        rc = 0; /* nothing stored for this server: anonymous, as docker does */
    else if (WEXITSTATUS(h.status) != 0)
        rc = vs_fail(err, -EIO, "registry '%s': credential helper %s (%s) failed with exit code %d%s%s", host,
                     program, origin, WEXITSTATUS(h.status), said[0] ? ": " : "", said);
    else
        rc = helper_answer(&h, host, basic, identity_token, err);
    wipe_free(h.output.data, h.output.len);
    wipe_free(h.errors.data, h.errors.len);
    return rc;
}

/* ---- Config files ---- */

/* Keys are "host", "https://host", "http://host/v1/"... ; Docker Hub's is "https://index.docker.io/v1/". */
static bool key_matches_host(const char *key, const char *host)
{
    const char *k = key;
    if (strncmp(k, "https://", 8) == 0)
        k += 8;
    else if (strncmp(k, "http://", 7) == 0)
        k += 7;
    size_t kl = strcspn(k, "/");
    if (strlen(host) == kl && strncmp(k, host, kl) == 0)
        return true;
    return strcmp(host, "docker.io") == 0 && ((kl == 15 && strncmp(k, "index.docker.io", 15) == 0) ||
                                              (kl == 20 && strncmp(k, "registry-1.docker.io", 20) == 0));
}

/* The entry of object (credHelpers or auths) whose key names host, or NULL. */
static json_t *entry_for_host(json_t *object, const char *host)
{
    const char *key;
    json_t *v;
    json_object_foreach(object, key, v)
    {
        if (key_matches_host(key, host))
            return v;
    }
    return NULL;
}

/* Credentials from an auths entry: "identitytoken", else "auth" (base64 of user:password) or
 * "username"/"password". The token comes first: docker login keeps "auth" (the user, no password) beside it.
 */
static int auths_credentials(json_t *config, const char *host, char **basic, char **identity_token,
                             struct vs_error *err)
{
    json_t *v = entry_for_host(json_object_get(config, "auths"), host);
    const char *auth = json_string_value(json_object_get(v, "auth"));
    const char *user = json_string_value(json_object_get(v, "username"));
    const char *pass = json_string_value(json_object_get(v, "password"));
    const char *token = json_string_value(json_object_get(v, "identitytoken"));
    if (token && token[0])
        *identity_token = strdup(token);
    else if (auth && auth[0])
        *basic = strdup(auth);
    else if (user && pass)
        *basic = registry_basic_credentials(user, pass);
    else
        return 0;
    if (!*identity_token && !*basic)
        return vs_fail(err, -ENOMEM, "registry '%s': out of memory", host);
    return 0;
}

/* Credentials for host from one config file (docker's config.json or a containers auth.json):
 * credHelpers[host] > credsStore > auths, as docker decides. A missing file is none unless must_exist. */
static int config_file_credentials(const char *path, const char *host, bool must_exist, char **basic,
                                   char **identity_token, struct vs_error *err)
{
    char *data;
    size_t len;
    struct vs_error e = {0};
    int rc = image_read_file(path, 4 << 20, &data, &len, &e);
    if (rc == -ENOENT && !must_exist)
        return 0;
    if (rc < 0)
        return vs_fail(err, rc, "registry '%s': credentials: %s", host, e.message);
    json_error_t je;
    json_t *j = json_loadb(data, len, 0, &je);
    wipe_free(data, len);
    if (!j)
        return vs_fail(err, -EINVAL, "registry '%s': credentials file '%s' is not valid JSON (line %d: %s)",
                       host, path, je.line, je.text);
    if (!json_is_object(j)) {
        json_decref(j);
        return vs_fail(err, -EINVAL, "registry '%s': credentials file '%s' is not a JSON object", host, path);
    }
    const char *helper = json_string_value(entry_for_host(json_object_get(j, "credHelpers"), host));
    const char *store = json_string_value(json_object_get(j, "credsStore"));
    char origin[1200];
    if (helper && helper[0]) {
        snprintf(origin, sizeof(origin), "credHelpers of %s", path);
        rc = helper_credentials(helper, host, origin, basic, identity_token, err);
    } else if (store && store[0]) {
        snprintf(origin, sizeof(origin), "credsStore of %s", path);
        rc = helper_credentials(store, host, origin, basic, identity_token, err);
    } else {
        rc = auths_credentials(j, host, basic, identity_token, err);
    }
    json_decref(j);
    return rc;
}

static char *docker_config_path(void)
{
    char *path = NULL;
    const char *dc = getenv("DOCKER_CONFIG");
    const char *home = getenv("HOME");
    if (dc && dc[0] && asprintf(&path, "%s/config.json", dc) < 0)
        path = NULL;
    else if ((!dc || !dc[0]) && home && asprintf(&path, "%s/.docker/config.json", home) < 0)
        path = NULL;
    return path;
}

/* podman's, skopeo's and buildah's: $REGISTRY_AUTH_FILE, else $XDG_RUNTIME_DIR/containers/auth.json. */
static char *containers_auth_path(void)
{
    char *path = NULL;
    const char *env = getenv("REGISTRY_AUTH_FILE");
    const char *run = getenv("XDG_RUNTIME_DIR");
    if (env && env[0])
        return strdup(env);
    if (run && run[0] && asprintf(&path, "%s/containers/auth.json", run) < 0)
        path = NULL;
    return path;
}

int registry_credentials_find(const char *host, const char *authfile, char **basic, char **identity_token,
                              struct vs_error *err)
{
    *basic = NULL;
    *identity_token = NULL;
    if (authfile)
        return config_file_credentials(authfile, host, true, basic, identity_token, err);
    char *docker = docker_config_path();
    int rc = docker ? config_file_credentials(docker, host, false, basic, identity_token, err) : 0;
    free(docker);
    if (rc < 0 || *basic || *identity_token)
        return rc;
    char *containers = containers_auth_path();
    rc = containers ? config_file_credentials(containers, host, false, basic, identity_token, err) : 0;
    free(containers);
    return rc;
}
