/* Units of the wire that need no daemon: the error-to-status table (against the codes containerd's errdefs
 * expects, per reference/containerd.md) and the configuration loader (defaults, the printed default,
 * flags-free overrides, every refusal naming its line). Exit 0 pass, 1 fail. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "grpc/vs_grpc.h"
#include "tests/lib/vs_test.h"

static void test_status_table(void)
{
    static const struct {
        int code;
        grpc_status_code want;
    } cases[] = {
        {0, GRPC_STATUS_OK},
        {-ENOENT, GRPC_STATUS_NOT_FOUND},
        {-EEXIST, GRPC_STATUS_ALREADY_EXISTS},
        {-EINVAL, GRPC_STATUS_INVALID_ARGUMENT},
        {-EBADMSG, GRPC_STATUS_INVALID_ARGUMENT},
        {-EBUSY, GRPC_STATUS_FAILED_PRECONDITION},
        {-ENODEV, GRPC_STATUS_FAILED_PRECONDITION},
        {-ENOTSUP, GRPC_STATUS_UNIMPLEMENTED},
        {-ECANCELED, GRPC_STATUS_CANCELLED},
        {-EIO, GRPC_STATUS_INTERNAL},
        {-ENOMEM, GRPC_STATUS_INTERNAL},
        {-ENOSPC, GRPC_STATUS_RESOURCE_EXHAUSTED},
        {-EDQUOT, GRPC_STATUS_RESOURCE_EXHAUSTED},
        {5, GRPC_STATUS_UNKNOWN},
        {-100000, GRPC_STATUS_UNKNOWN},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        grpc_status_code got = vs_grpc_status_from_code(cases[i].code);
        CHECK(got == cases[i].want, "code %d: %s, want %s", cases[i].code, vs_grpc_status_name(got),
              vs_grpc_status_name(cases[i].want));
    }
    CHECK(strcmp(vs_grpc_status_name(GRPC_STATUS_FAILED_PRECONDITION), "FAILED_PRECONDITION") == 0, "name");
}

static char dir[] = "/tmp/vs-grpc-units-XXXXXX";
static char path[512];

static int load_text(const char *text, struct vs_daemon_config *c, struct vs_error *err)
{
    FILE *f = fopen(path, "w");
    fputs(text, f);
    fclose(f);
    vs_error_clear(err);
    int r = vs_daemon_config_default(c, err);
    if (r == 0)
        r = vs_daemon_config_load(c, path, true, err);
    return r;
}

/* A refusal: returns the message for inspection. */
static void expect_error(const char *text, const char *needle)
{
    struct vs_daemon_config c;
    struct vs_error err;
    int r = load_text(text, &c, &err);
    CHECK(r < 0, "accepted: %s", text);
    CHECK(r >= 0 || strstr(err.message, needle), "message \"%s\" lacks \"%s\"", err.message, needle);
    vs_daemon_config_free(&c);
}

static void test_config(void)
{
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        exit(1);
    }
    snprintf(path, sizeof(path), "%s/config.toml", dir);
    struct vs_daemon_config c;
    struct vs_error err;

    /* Defaults, and a missing default file keeps them. */
    CHECK(vs_daemon_config_default(&c, &err) == 0, "%s", err.message);
    CHECK(vs_daemon_config_load(&c, "/nonexistent/config.toml", false, &err) == 0, "%s", err.message);
    CHECK(strcmp(c.root, VS_DEFAULT_ROOT) == 0 && c.verity == SNAPSHOTTER_VERITY_REQUIRE &&
              strcmp(c.containerd_address, VS_DEFAULT_CONTAINERD_ADDRESS) == 0 &&
              strcmp(c.log_level, "info") == 0 && c.listen_count == 1 &&
              strcmp(c.listen[0].address, VS_DEFAULT_SOCKET) == 0 && c.listen[0].group[0] == '\0',
          "defaults");
    CHECK(vs_daemon_config_load(&c, "/nonexistent/config.toml", true, &err) < 0,
          "missing explicit file accepted");
    vs_daemon_config_free(&c);

    /* The printed default parses to the defaults. */
    CHECK(load_text(vs_daemon_config_default_text(), &c, &err) == 0, "default text: %s", err.message);
    CHECK(strcmp(c.root, VS_DEFAULT_ROOT) == 0 && c.verity == SNAPSHOTTER_VERITY_REQUIRE &&
              c.listen_count == 1 && strcmp(c.listen[0].address, VS_DEFAULT_SOCKET) == 0 &&
              c.max_layer_size == 0 && strcmp(c.tardev_layer_src_prefix, "") == 0 &&
              c.min_free_space == VS_DEFAULT_MIN_FREE_SPACE,
          "default text differs from the defaults");
    vs_daemon_config_free(&c);

    /* Everything set. */
    CHECK(load_text(
              "root = \"/srv/vs\"\nverity = \"auto\"\ncontainerd_address = \"/x/c.sock\"\n"
              "max_layer_size = 68719476736\n"
              "min_free_space = 0\n"
              "tardev_layer_src_prefix = \"/var/lib/containerd/io.containerd.snapshotter.v1.tardev/layers\"\n"
              "log_level = \"debug\"\n[[listen]]\naddress = \"/r/a.sock\"\ngroup = \"kvm\"\n"
              "[[listen]]\naddress = \"unix:///r/b.sock\"\ngroup = 107\n",
              &c, &err) == 0,
          "%s", err.message);
    CHECK(strcmp(c.root, "/srv/vs") == 0 && c.verity == SNAPSHOTTER_VERITY_AUTO &&
              strcmp(c.containerd_address, "/x/c.sock") == 0 && strcmp(c.log_level, "debug") == 0 &&
              c.max_layer_size == 68719476736ull && c.min_free_space == 0 &&
              strcmp(c.tardev_layer_src_prefix,
                     "/var/lib/containerd/io.containerd.snapshotter.v1.tardev/layers") == 0,
          "top-level keys");
    CHECK(c.listen_count == 2 && strcmp(c.listen[0].address, "/r/a.sock") == 0 &&
              strcmp(c.listen[0].group, "kvm") == 0 && strcmp(c.listen[1].address, "unix:///r/b.sock") == 0 &&
              strcmp(c.listen[1].group, "107") == 0 && strcmp(c.listen[1].dialect, "host") == 0,
          "listen tables");
    vs_daemon_config_free(&c);

    /* Refusals, each naming the line. */
    expect_error("root = \"/a\"\nroots = \"/b\"\n", ":2");
    expect_error("root = \"/a\"\nroots = \"/b\"\n", "roots");
    expect_error("[[listen]]\naddress = \"/a.sock\"\ndialect2 = \"x\"\n", ":3");
    expect_error("verity = \"sometimes\"\n", ":1");
    expect_error("log_level = \"loud\"\n", ":1");
    expect_error("max_layer_size = -1\n", ":1");
    expect_error("min_free_space = -5\n", ":1");
    expect_error("min_free_space = \"1G\"\n", ":1");
    expect_error("max_layer_size = \"64G\"\n", ":1");
    expect_error("root = \"relative/dir\"\n", ":1");
    expect_error("log_level = \"info\"\ntardev_layer_src_prefix = \"layers\"\n", ":2");
    expect_error("root = 5\n", ":1");
    expect_error("[[listen]]\naddress = \"sock\"\n", ":2");
    expect_error("[[listen]]\naddress = \"/a.sock\"\n[[listen]]\naddress = \"/a.sock\"\n", ":4");
    expect_error("[[listen]]\ngroup = -1\n", ":2");
    expect_error("[listen]\naddress = \"/a.sock\"\n", "listen");
    expect_error("[grpc]\naddress = \"/a.sock\"\n", "grpc");

    unlink(path);
    rmdir(dir);
}

int main(void)
{
    test_status_table();
    test_config();
    fprintf(stderr, "%s: %d failure(s)\n", failures ? "FAIL" : "PASS", failures);
    return failures ? 1 : 0;
}
