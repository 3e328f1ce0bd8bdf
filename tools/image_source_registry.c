/* The registry image source: the OCI distribution API over libcurl (manifests and blobs, redirects followed
 * but never from https to http), bearer-token and basic auth, retries with backoff, blobs resumed by Range
 * after a cut. An identity token is traded for bearer tokens by the OAuth2 refresh-token grant (a form POST
 * to the realm), as the distribution token spec and docker do; passwords use its GET. Credentials go into
 * request headers only: never printed, never logged (no CURLOPT_VERBOSE), wiped when the source is freed. */
#include <curl/curl.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "image.h"

#define ACCEPT_MANIFESTS                                                                                     \
    "Accept: application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, "          \
    "application/vnd.docker.distribution.manifest.list.v2+json, "                                            \
    "application/vnd.docker.distribution.manifest.v2+json"

struct registry_source {
    struct image_source base;
    char *host;     /* as in the reference, e.g. 127.0.0.1:5000 or docker.io */
    char *api_host; /* where the API lives (registry-1.docker.io for docker.io) */
    char *repo;
    char *tag;    /* or NULL */
    char *digest; /* or NULL */
    char *scheme;
    char *ca_file;
    char *basic;          /* base64(user:password), or NULL */
    char *identity_token; /* an OAuth2 refresh token (az acr login's), or NULL; never with basic */
    int retries;
    pthread_mutex_t lock;
    char *auth; /* the Authorization header to send, or NULL */
};

/* One response, streamed to fn when 2xx, else kept (small) for the message. */
struct response {
    struct registry_source *s;
    CURL *curl;
    image_chunk_fn fn;
    void *ctx;
    struct vs_error *err;
    int fn_rc;
    uint64_t delivered;  /* body bytes that went to fn, over all attempts: a retry resumes after them */
    uint64_t range_from; /* this attempt asked for bytes from here on (Range), or 0 */
    uint64_t skip;       /* bytes of this attempt's body that fn already had (a 200 to a Range request) */
    bool streaming;      /* this attempt's 2xx body has started and its start was checked */
    char *body;          /* buffered body (errors, or when fn is NULL) */
    size_t body_len;
    size_t body_cap;
    size_t body_max;
    char *www_auth;
    char *content_type;
    char *docker_digest;
    char *content_range;
};

static size_t on_header(char *buf, size_t size, size_t n, void *ctx)
{
    struct response *r = ctx;
    size_t len = size * n;
    char **slot = NULL;
    size_t skip = 0;
    if (len > 17 && strncasecmp(buf, "WWW-Authenticate:", 17) == 0)
        slot = &r->www_auth, skip = 17;
    else if (len > 13 && strncasecmp(buf, "Content-Type:", 13) == 0)
        slot = &r->content_type, skip = 13;
    else if (len > 22 && strncasecmp(buf, "Docker-Content-Digest:", 22) == 0)
        slot = &r->docker_digest, skip = 22;
    else if (len > 14 && strncasecmp(buf, "Content-Range:", 14) == 0)
        slot = &r->content_range, skip = 14;
    else if (len >= 5 && strncmp(buf, "HTTP/", 5) == 0) {
        /* A new response (after a redirect): forget the previous one's headers. */
        free(r->www_auth), r->www_auth = NULL;
        free(r->content_type), r->content_type = NULL;
        free(r->docker_digest), r->docker_digest = NULL;
        free(r->content_range), r->content_range = NULL;
    }
    if (slot) {
        const char *v = buf + skip;
        size_t vl = len - skip;
        while (vl && (*v == ' ' || *v == '\t'))
            v++, vl--;
        while (vl && (v[vl - 1] == '\r' || v[vl - 1] == '\n' || v[vl - 1] == ' '))
            vl--;
        free(*slot);
        *slot = strndup(v, vl);
    }
    return len;
}

/* Where a resumed 2xx body starts, checked once per attempt: a 206 must start at the byte asked for, a 200
 * (the server ignored Range) starts at 0 and what fn already had is skipped. */
static int stream_start(struct response *r, long code)
{
    r->streaming = true;
    r->skip = 0;
    if (code == 206) {
        uint64_t start = 0;
        const char *cr = r->content_range;
        if (!cr || strncasecmp(cr, "bytes ", 6) != 0 || sscanf(cr + 6, "%" SCNu64, &start) != 1)
            return vs_fail(r->err, -EIO,
                           "registry '%s': a partial answer (206) without a byte range (%s%s%s)", r->s->host,
                           cr ? "Content-Range: '" : "no Content-Range", cr ? cr : "", cr ? "'" : "");
        if (start != r->range_from)
            return vs_fail(r->err, -EIO,
                           "registry '%s': resuming a blob at byte %" PRIu64
                           ", the answer starts at byte %" PRIu64 " (%s)",
                           r->s->host, r->range_from, start, cr);
    } else {
        r->skip = r->range_from;
    }
    return 0;
}

static size_t on_body(char *buf, size_t size, size_t n, void *ctx)
{
    struct response *r = ctx;
    size_t len = size * n;
    long code = 0;
    curl_easy_getinfo(r->curl, CURLINFO_RESPONSE_CODE, &code);
    if (code / 100 == 2 && r->fn) {
        if (!r->streaming && (r->fn_rc = stream_start(r, code)) < 0)
            return 0;
        size_t drop = r->skip < len ? (size_t)r->skip : len;
        r->skip -= drop;
        if (drop == len)
            return len;
        r->fn_rc = r->fn(r->ctx, buf + drop, len - drop, r->err);
        if (r->fn_rc < 0)
            return 0;
        r->delivered += len - drop;
        return len;
    }
    size_t max = code / 100 == 2 ? r->body_max : 64 * 1024;
    if (r->body_len + len > max) {
        if (code / 100 == 2) {
            r->fn_rc = vs_fail(r->err, -EFBIG, "response bigger than %zu bytes", max);
            return 0;
        }
        return len; /* the start of an error body is enough */
    }
    if (r->body_len + len + 1 > r->body_cap) {
        size_t cap = (r->body_len + len + 1) * 2;
        char *b = realloc(r->body, cap);
        if (!b)
            return 0;
        r->body = b;
        r->body_cap = cap;
    }
    memcpy(r->body + r->body_len, buf, len);
    r->body_len += len;
    r->body[r->body_len] = '\0';
    return len;
}

/* Forgets one attempt's answer; what went to fn (delivered) stays: the next attempt resumes after it. */
static void response_reset(struct response *r)
{
    free(r->body);
    free(r->www_auth);
    free(r->content_type);
    free(r->docker_digest);
    free(r->content_range);
    r->body = r->www_auth = r->content_type = r->docker_digest = r->content_range = NULL;
    r->body_len = r->body_cap = 0;
    r->range_from = r->skip = 0;
    r->streaming = false;
    r->fn_rc = 0;
}

/* One GET (a POST of form, application/x-www-form-urlencoded, when form is not NULL) with retries on
 * connection errors and 5xx; returns the status (>= 100) or a negative code. A streamed body cut after some
 * bytes went to fn is resumed with Range, so that fn sees each byte once. auth: the Authorization header
 * value or NULL. */
static long http_get(struct registry_source *s, const char *url, const char *accept, const char *auth,
                     const char *form, struct response *r, struct vs_error *err)
{
    long code = 0;
    const char *method = form ? "POST" : "GET";
    /* A redirect may go to another host (blob stores) but never from https down to http. */
    bool https = strncasecmp(url, "https:", 6) == 0;
    for (int attempt = 0;; attempt++) {
        response_reset(r);
        CURL *c = curl_easy_init();
        if (!c)
            return vs_fail(err, -ENOMEM, "curl_easy_init failed");
        r->curl = c;
        struct curl_slist *h = NULL;
        char *authh = NULL;
        char range[48];
        if (accept)
            h = curl_slist_append(h, accept);
        if (auth && asprintf(&authh, "Authorization: %s", auth) >= 0)
            h = curl_slist_append(h, authh);
        if (form)
            h = curl_slist_append(h, "Content-Type: application/x-www-form-urlencoded");
        if (r->fn && r->delivered) {
            r->range_from = r->delivered;
            snprintf(range, sizeof(range), "Range: bytes=%" PRIu64 "-", r->range_from);
            h = curl_slist_append(h, range);
        }
        curl_easy_setopt(c, CURLOPT_URL, url);
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
        if (form) {
            /* Not copied by curl: the caller wipes the one copy of the token in it. */
            curl_easy_setopt(c, CURLOPT_POSTFIELDS, form);
            curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)strlen(form));
        }
        curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 1L);
        curl_easy_setopt(c, CURLOPT_MAXREDIRS, 10L);
        curl_easy_setopt(c, CURLOPT_USERAGENT, "veritysnap/" VS_VERSION);
        curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, 30L);
        /* A stalled transfer (under 1 KiB/s for 60 s) is a connection error, retried like one. */
        curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1024L);
        curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, 60L);
        curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
        curl_easy_setopt(c, CURLOPT_HEADERDATA, r);
        curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
        curl_easy_setopt(c, CURLOPT_WRITEDATA, r);
        curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
        curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS_STR, https ? "https" : "http,https");
        if (s->ca_file)
            curl_easy_setopt(c, CURLOPT_CAINFO, s->ca_file);
        CURLcode cc = curl_easy_perform(c);
        code = 0;
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
        char *where = NULL;
        if (cc == CURLE_UNSUPPORTED_PROTOCOL) {
            char *u = NULL;
            curl_easy_getinfo(c, CURLINFO_EFFECTIVE_URL, &u);
            where = u ? strdup(u) : NULL;
        }
        curl_easy_cleanup(c);
        curl_slist_free_all(h);
        if (authh) {
            explicit_bzero(authh, strlen(authh));
            free(authh);
        }
        if (r->fn_rc < 0) {
            free(where);
            return r->fn_rc;
        }
        if (cc == CURLE_UNSUPPORTED_PROTOCOL && where && strcmp(where, url) != 0) {
            /* A refused redirect: retrying would be refused again. */
            int rc = vs_fail(err, -EIO, "registry '%s': %s %s was redirected to %s, which is refused (%s)",
                             s->host, method, url, where,
                             https ? "a redirect from https must stay on https" : curl_easy_strerror(cc));
            free(where);
            return rc;
        }
        free(where);
        bool retry = (cc != CURLE_OK || code >= 500) && attempt < s->retries;
        if (!retry) {
            if (cc != CURLE_OK && r->delivered)
                return vs_fail(err, -EIO, "registry '%s': %s %s: %s (after %" PRIu64 " bytes of the body)",
                               s->host, method, url, curl_easy_strerror(cc), r->delivered);
            if (cc != CURLE_OK)
                return vs_fail(err, -EIO, "registry '%s': %s %s: %s", s->host, method, url,
                               curl_easy_strerror(cc));
            return code;
        }
        struct timespec ts = {0, (long)(100000000L << (attempt < 4 ? attempt : 4))};
        while (ts.tv_nsec >= 1000000000L)
            ts.tv_sec++, ts.tv_nsec -= 1000000000L;
        nanosleep(&ts, NULL);
    }
}

/* Value of key in a challenge such as: Bearer
 * realm="https://x/token",service="reg",scope="repository:r:pull". */
static char *challenge_param(const char *ch, const char *key)
{
    size_t kl = strlen(key);
    for (const char *p = ch; (p = strcasestr(p, key)) != NULL; p += kl) {
        if (p != ch && p[-1] != ' ' && p[-1] != ',')
            continue;
        const char *v = p + kl;
        if (*v != '=')
            continue;
        v++;
        if (*v == '"') {
            const char *e = strchr(v + 1, '"');
            return e ? strndup(v + 1, (size_t)(e - v - 1)) : NULL;
        }
        size_t n = strcspn(v, ", ");
        return strndup(v, n);
    }
    return NULL;
}

static char *url_escape(const char *s)
{
    char *e = curl_easy_escape(NULL, s, 0);
    char *out = e ? strdup(e) : NULL;
    if (e)
        explicit_bzero(e, strlen(e)); /* it may be a token */
    curl_free(e);
    return out;
}

static void wipe_free(char *s)
{
    if (s) {
        explicit_bzero(s, strlen(s));
        free(s);
    }
}

/* The OAuth2 refresh-token grant of the distribution token spec, as docker sends it (client_id names the
 * client); NULL when out of memory. The caller wipes it: it holds the identity token. */
static char *refresh_token_form(const char *service, const char *scope, const char *identity_token)
{
    char *es = url_escape(scope), *esv = url_escape(service ? service : ""), *et = url_escape(identity_token);
    char *form = NULL;
    if (es && esv && et &&
        asprintf(&form, "grant_type=refresh_token&service=%s&scope=%s&client_id=veritysnap&refresh_token=%s",
                 esv, es, et) < 0)
        form = NULL;
    free(es), free(esv), wipe_free(et);
    return form;
}

/* Answers a 401's challenge: fetches a bearer token, or uses basic credentials. Sets s->auth. */
static int authenticate(struct registry_source *s, const char *challenge, const char *failed_auth,
                        struct vs_error *err)
{
    pthread_mutex_lock(&s->lock);
    /* Another thread may have answered the same challenge meanwhile. */
    if (s->auth && (!failed_auth || strcmp(s->auth, failed_auth) != 0)) {
        pthread_mutex_unlock(&s->lock);
        return 0;
    }
    int rc = 0;
    if (!challenge) {
        rc = vs_fail(err, -EACCES, "registry '%s' refused access without a challenge", s->host);
    } else if (strncasecmp(challenge, "Basic", 5) == 0) {
        if (!s->basic && s->identity_token)
            rc = vs_fail(err, -EACCES,
                         "registry '%s' wants a username and password, and an identity token is only "
                         "traded at a bearer token endpoint (--username/--password-stdin)",
                         s->host);
        else if (!s->basic)
            rc = vs_fail(err, -EACCES,
                         "registry '%s' wants a username and password (--username/--password-stdin, "
                         "docker login or --authfile)",
                         s->host);
        else if (failed_auth && strncmp(failed_auth, "Basic ", 6) == 0)
            rc = vs_fail(err, -EACCES,
                         "registry '%s' refused the credentials for repository '%s' (wrong username "
                         "or password?)",
                         s->host, s->repo);
        else {
            free(s->auth);
            if (asprintf(&s->auth, "Basic %s", s->basic) < 0)
                s->auth = NULL;
        }
    } else if (strncasecmp(challenge, "Bearer", 6) == 0) {
        char *realm = challenge_param(challenge, "realm");
        char *service = challenge_param(challenge, "service");
        char *scope = challenge_param(challenge, "scope");
        char *want_scope = NULL;
        if (!scope && asprintf(&want_scope, "repository:%s:pull", s->repo) < 0)
            want_scope = NULL;
        const char *use_scope = scope ? scope : want_scope ? want_scope : "";
        char *es = url_escape(use_scope);
        char *esv = service ? url_escape(service) : NULL;
        char *url = NULL;
        char *form = NULL;
        if (!realm) {
            rc = vs_fail(err, -EACCES, "registry '%s': bearer challenge without a realm", s->host);
        } else if (s->identity_token) {
            /* The refresh-token grant posts service and scope in the form, not the query. */
            url = strdup(realm);
            form = refresh_token_form(service, use_scope, s->identity_token);
            if (!url || !form)
                rc = vs_fail(err, -ENOMEM, "out of memory");
        } else if (asprintf(&url, "%s%sscope=%s%s%s", realm, strchr(realm, '?') ? "&" : "?", es ? es : "",
                            esv ? "&service=" : "", esv ? esv : "") < 0) {
            url = NULL;
            rc = vs_fail(err, -ENOMEM, "out of memory");
        }
        if (rc == 0) {
            char *basic = NULL;
            if (s->basic && asprintf(&basic, "Basic %s", s->basic) < 0)
                basic = NULL;
            struct response r = {.s = s, .err = err, .body_max = 1 << 20};
            long code = http_get(s, url, NULL, basic, form, &r, err);
            wipe_free(basic);
            if (code < 0) {
                rc = (int)code;
            } else if (s->identity_token && (code == 400 || code == 401 || code == 403)) {
                rc = vs_fail(err, -EACCES,
                             "the token endpoint of registry '%s' refused the identity token for repository "
                             "'%s' (HTTP %ld: expired or revoked? log in again, e.g. az acr login)",
                             s->host, s->repo, code);
            } else if (code == 401 || code == 403) {
                rc = vs_fail(err, -EACCES,
                             "the token endpoint of registry '%s' refused %s for repository '%s' "
                             "(HTTP %ld%s)",
                             s->host, s->basic ? "the credentials" : "anonymous access", s->repo, code,
                             s->basic ? ": wrong username or password?" : "");
            } else if (code / 100 != 2) {
                rc = vs_fail(err, -EIO, "the token endpoint of registry '%s' answered HTTP %ld", s->host,
                             code);
            } else {
                json_t *j = json_loadb(r.body ? r.body : "", r.body_len, 0, NULL);
                /* The GET answers token (access_token too, for OAuth2 clients); the POST access_token. */
                const char *tok =
                    json_string_value(json_object_get(j, s->identity_token ? "access_token" : "token"));
                if (!tok)
                    tok = json_string_value(json_object_get(j, s->identity_token ? "token" : "access_token"));
                if (!tok) {
                    rc = vs_fail(err, -EIO, "the token endpoint of registry '%s' gave no token", s->host);
                } else if (failed_auth && strncmp(failed_auth, "Bearer ", 7) == 0 &&
                           strcmp(failed_auth + 7, tok) == 0) {
                    rc = vs_fail(err, -EACCES, "registry '%s' refused its own token for repository '%s'",
                                 s->host, s->repo);
                } else {
                    free(s->auth);
                    if (asprintf(&s->auth, "Bearer %s", tok) < 0)
                        s->auth = NULL;
                }
                json_decref(j);
            }
            if (r.body)
                explicit_bzero(r.body, r.body_len);
            response_reset(&r);
        }
        wipe_free(form);
        free(realm), free(service), free(scope), free(want_scope), free(es), free(esv), free(url);
    } else {
        rc = vs_fail(err, -EACCES, "registry '%s': unsupported authentication scheme", s->host);
    }
    pthread_mutex_unlock(&s->lock);
    return rc;
}

static char *current_auth(struct registry_source *s)
{
    pthread_mutex_lock(&s->lock);
    char *a = s->auth ? strdup(s->auth) : NULL;
    pthread_mutex_unlock(&s->lock);
    return a;
}

/* The registry's error code from an error body ({"errors":[{"code":"NAME_UNKNOWN",...}]}), or "". */
static const char *error_code(const struct response *r, char *buf, size_t cap)
{
    buf[0] = '\0';
    json_t *j = r->body ? json_loadb(r->body, r->body_len, 0, NULL) : NULL;
    const char *c =
        json_string_value(json_object_get(json_array_get(json_object_get(j, "errors"), 0), "code"));
    if (c)
        snprintf(buf, cap, "%s", c);
    json_decref(j);
    return buf;
}

/* GET path under /v2/<repo>/, answering auth challenges; what names the object in messages. */
static int registry_get(struct registry_source *s, const char *path, const char *accept, const char *what,
                        struct response *r, struct vs_error *err)
{
    char *url;
    if (asprintf(&url, "%s://%s/v2/%s/%s", s->scheme, s->api_host, s->repo, path) < 0)
        return vs_fail(err, -ENOMEM, "out of memory");
    int rc = 0;
    for (int round = 0; round < 3; round++) {
        char *auth = current_auth(s);
        long code = http_get(s, url, accept, auth, NULL, r, err);
        if (code == 401 && round < 2) {
            char *ch = r->www_auth ? strdup(r->www_auth) : NULL;
            rc = authenticate(s, ch, auth, err);
            free(ch);
            if (auth) {
                explicit_bzero(auth, strlen(auth));
                free(auth);
            }
            if (rc < 0)
                break;
            continue;
        }
        if (auth) {
            explicit_bzero(auth, strlen(auth));
            free(auth);
        }
        char ec[64];
        if (code < 0)
            rc = (int)code;
        else if (code / 100 == 2)
            rc = 0;
        else if (code == 401)
            rc = vs_fail(err, -EACCES, "registry '%s' refused the credentials for repository '%s'", s->host,
                         s->repo);
        else if (code == 403)
            rc = vs_fail(err, -EACCES, "registry '%s' denied access to repository '%s' (HTTP 403)", s->host,
                         s->repo);
        else if (code == 404 && strcmp(error_code(r, ec, sizeof(ec)), "NAME_UNKNOWN") == 0)
            rc = vs_fail(err, -ENOENT, "repository '%s' not found on registry '%s'", s->repo, s->host);
        else if (code == 404)
            rc = vs_fail(err, -ENOENT, "%s not found in repository '%s' on registry '%s'%s%s%s", what,
                         s->repo, s->host, ec[0] ? " (" : "", ec, ec[0] ? ")" : "");
        else
            rc = vs_fail(err, -EIO, "registry '%s': GET %s answered HTTP %ld", s->host, url, code);
        break;
    }
    free(url);
    return rc;
}

static bool is_manifest_type(const char *mt)
{
    return mt && (strstr(mt, "manifest") || strstr(mt, "index"));
}

static int fetch_path(struct registry_source *s, const char *path, const char *accept, const char *what,
                      struct image_blob *out, struct vs_error *err)
{
    struct response r = {.s = s, .err = err, .body_max = IMAGE_SMALL_BLOB_MAX};
    memset(out, 0, sizeof(*out));
    int rc = registry_get(s, path, accept, what, &r, err);
    if (rc == 0) {
        out->data = r.body ? r.body : strdup("");
        out->len = r.body_len;
        r.body = NULL;
        if (r.content_type) {
            size_t n = strcspn(r.content_type, ";");
            snprintf(out->media_type, sizeof(out->media_type), "%.*s", (int)n, r.content_type);
        }
        if (r.docker_digest && image_digest_valid(r.docker_digest))
            snprintf(out->digest, sizeof(out->digest), "%s", r.docker_digest);
    }
    response_reset(&r);
    return rc;
}

static int registry_resolve(struct image_source *base, struct image_blob *root, struct vs_error *err)
{
    struct registry_source *s = (struct registry_source *)base;
    char *path, *what;
    const char *id = s->digest ? s->digest : s->tag;
    if (asprintf(&path, "manifests/%s", id) < 0)
        return vs_fail(err, -ENOMEM, "out of memory");
    if (asprintf(&what, s->digest ? "manifest '%s'" : "tag '%s'", id) < 0) {
        free(path);
        return vs_fail(err, -ENOMEM, "out of memory");
    }
    int rc = fetch_path(s, path, ACCEPT_MANIFESTS, what, root, err);
    free(path);
    free(what);
    if (rc == -ENOENT) {
        /* Registries answer an unknown repository's tag with MANIFEST_UNKNOWN too; the tag list tells them
         * apart. */
        struct image_blob tags = {0};
        struct vs_error terr = {0};
        int trc = fetch_path(s, "tags/list", NULL, "the tag list", &tags, &terr);
        if (trc == -ENOENT) {
            rc = vs_fail(err, -ENOENT, "repository '%s' not found on registry '%s'", s->repo, s->host);
        } else if (trc == 0) {
            json_t *j = json_loadb(tags.data, tags.len, 0, NULL);
            json_t *list = json_object_get(j, "tags");
            char known[512] = "";
            for (size_t i = 0; i < json_array_size(list); i++) {
                const char *t = json_string_value(json_array_get(list, i));
                if (t && strlen(known) + strlen(t) + 3 < sizeof(known) - 4) {
                    if (known[0])
                        strcat(known, ", ");
                    strcat(known, t);
                } else if (t) {
                    strcat(known, ", ...");
                    break;
                }
            }
            rc = vs_fail(err, -ENOENT, "%s '%s' not found in repository '%s' on registry '%s' (tags: %s)",
                         s->digest ? "manifest" : "tag", id, s->repo, s->host, known[0] ? known : "none");
            json_decref(j);
        }
        image_blob_free(&tags);
    }
    if (rc < 0)
        return rc;
    char got[IMAGE_DIGEST_MAX];
    image_digest_of(root->data, root->len, got);
    const char *want = s->digest ? s->digest : root->digest[0] ? root->digest : NULL;
    if (want && strcmp(want, got) != 0) {
        rc = vs_fail(err, -EBADMSG, "manifest digest mismatch: %s %s, content is %s",
                     s->digest ? "the reference says" : "the registry says", want, got);
        image_blob_free(root);
        return rc;
    }
    snprintf(root->digest, sizeof(root->digest), "%s", got);
    return 0;
}

static int registry_fetch(struct image_source *base, const struct image_descriptor *d, struct image_blob *out,
                          struct vs_error *err)
{
    struct registry_source *s = (struct registry_source *)base;
    bool manifest = is_manifest_type(d->media_type);
    char *path, *what;
    if (asprintf(&path, "%s/%s", manifest ? "manifests" : "blobs", d->digest) < 0)
        return vs_fail(err, -ENOMEM, "out of memory");
    if (asprintf(&what, "%s %s", manifest ? "manifest" : "blob", d->digest) < 0) {
        free(path);
        return vs_fail(err, -ENOMEM, "out of memory");
    }
    int rc = fetch_path(s, path, manifest ? ACCEPT_MANIFESTS : NULL, what, out, err);
    if (rc == 0 && d->media_type)
        snprintf(out->media_type, sizeof(out->media_type), "%s", d->media_type);
    free(path);
    free(what);
    return rc;
}

static int registry_stream(struct image_source *base, const struct image_descriptor *d, image_chunk_fn fn,
                           void *ctx, struct vs_error *err)
{
    struct registry_source *s = (struct registry_source *)base;
    char *path, *what;
    if (asprintf(&path, "blobs/%s", d->digest) < 0)
        return vs_fail(err, -ENOMEM, "out of memory");
    if (asprintf(&what, "blob %s", d->digest) < 0) {
        free(path);
        return vs_fail(err, -ENOMEM, "out of memory");
    }
    struct response r = {.s = s, .err = err, .fn = fn, .ctx = ctx, .body_max = 0};
    int rc = registry_get(s, path, NULL, what, &r, err);
    response_reset(&r);
    free(path);
    free(what);
    return rc;
}

static void registry_free(struct image_source *base)
{
    struct registry_source *s = (struct registry_source *)base;
    if (s->basic)
        explicit_bzero(s->basic, strlen(s->basic));
    if (s->auth)
        explicit_bzero(s->auth, strlen(s->auth));
    wipe_free(s->identity_token);
    free(s->basic), free(s->auth), free(s->host), free(s->api_host), free(s->repo), free(s->tag),
        free(s->digest);
    free(s->scheme), free(s->ca_file), free(s->base.name);
    pthread_mutex_destroy(&s->lock);
    free(s);
}

static const struct image_source_ops registry_ops = {registry_resolve, registry_fetch, registry_stream,
                                                     registry_free};

/* REGISTRY/REPO[:TAG|@DIGEST]; a first component without '.' or ':' (and not localhost) means docker.io. */
static int parse_reference(struct registry_source *s, const char *ref, struct vs_error *err)
{
    char *r = strdup(ref);
    char *at = strchr(r, '@');
    if (at) {
        *at = '\0';
        if (!image_digest_valid(at + 1)) {
            free(r);
            return vs_fail(err, -EINVAL, "reference '%s': bad digest (sha256:<64 hex> expected)", ref);
        }
        s->digest = strdup(at + 1);
    }
    char *slash = strchr(r, '/');
    char *rest = r;
    if (slash && (memchr(r, '.', (size_t)(slash - r)) || memchr(r, ':', (size_t)(slash - r)) ||
                  strncmp(r, "localhost/", 10) == 0)) {
        s->host = strndup(r, (size_t)(slash - r));
        rest = slash + 1;
    } else {
        s->host = strdup("docker.io");
    }
    char *colon = strrchr(rest, ':');
    if (colon) {
        *colon = '\0';
        s->tag = strdup(colon + 1);
    }
    if (!s->digest && !s->tag)
        s->tag = strdup("latest");
    if (strcmp(s->host, "docker.io") == 0 && !strchr(rest, '/')) {
        if (asprintf(&s->repo, "library/%s", rest) < 0)
            s->repo = NULL;
    } else {
        s->repo = strdup(rest);
    }
    s->api_host = strdup(strcmp(s->host, "docker.io") == 0 ? "registry-1.docker.io" : s->host);
    free(r);
    if (!s->repo || !s->repo[0] || (s->tag && !s->tag[0]))
        return vs_fail(err, -EINVAL, "reference '%s' is not REGISTRY/REPO[:TAG|@DIGEST]", ref);
    for (const char *p = s->repo; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || strchr("._-/", *p)))
            return vs_fail(err, -EINVAL,
                           "reference '%s': repository '%s' has characters the distribution API "
                           "does not allow",
                           ref, s->repo);
    return 0;
}

static void curl_init_once(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
}

int image_source_registry_open(const char *reference, const struct registry_options *opts,
                               struct image_source **out, struct vs_error *err)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, curl_init_once);
    struct registry_source *s = calloc(1, sizeof(*s));
    s->base.ops = &registry_ops;
    s->base.name = strdup(reference);
    pthread_mutex_init(&s->lock, NULL);
    s->retries = opts->retries;
    s->scheme = strdup(opts->plain_http ? "http" : "https");
    s->ca_file = opts->ca_file ? strdup(opts->ca_file) : NULL;
    int rc = parse_reference(s, reference, err);
    if (rc < 0) {
        registry_free(&s->base);
        return rc;
    }
    if (opts->username && opts->password)
        s->basic = registry_basic_credentials(opts->username, opts->password);
    else
        rc = registry_credentials_find(s->host, opts->authfile, &s->basic, &s->identity_token, err);
    if (rc < 0) {
        registry_free(&s->base);
        return rc;
    }
    *out = &s->base;
    return 0;
}
