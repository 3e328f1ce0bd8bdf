/* The salted block hash of F.3 over OpenSSL EVP, with reused contexts: a 4 KiB block costs what SHA-256
 * costs. */
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "verity/verity_internal.h"

int verity_hasher_init(struct verity_hasher *h, const struct verity_params *p, struct vs_error *err)
{
    memset(h, 0, sizeof(*h));
    int r = verity_params_check(p, err);
    if (r < 0)
        return r;
    /* An explicit fetch: the implicit one behind EVP_sha256() is repeated on every EVP_DigestInit_ex. */
    h->md = EVP_MD_fetch(NULL, p->hash_algorithm, NULL);
    h->primed = EVP_MD_CTX_new();
    h->work = EVP_MD_CTX_new();
    if (!h->md || !h->primed || !h->work) {
        verity_hasher_fini(h);
        return vs_fail(err, -ENOMEM, "verity: cannot set up OpenSSL %s", p->hash_algorithm);
    }
    memcpy(h->salt, p->salt, p->salt_size);
    h->salt_size = p->salt_size;
    h->format = p->format;
    h->digest_size = verity_digest_size(p);
    /* v1 hashes the salt first: feed it once and copy that state for every block. */
    if (EVP_DigestInit_ex(h->primed, h->md, NULL) != 1 || EVP_DigestInit_ex(h->work, h->md, NULL) != 1 ||
        (p->format == 1 && p->salt_size && EVP_DigestUpdate(h->primed, h->salt, h->salt_size) != 1)) {
        verity_hasher_fini(h);
        return vs_fail(err, -EIO, "verity: OpenSSL cannot start a %s digest", p->hash_algorithm);
    }
    return 0;
}

void verity_hasher_fini(struct verity_hasher *h)
{
    EVP_MD_CTX_free(h->primed);
    EVP_MD_CTX_free(h->work);
    EVP_MD_free(h->md);
    h->primed = h->work = NULL;
    h->md = NULL;
}

int verity_hasher_block(struct verity_hasher *h, const void *block, size_t len, uint8_t *out)
{
    int ok;
    if (h->format == 1)
        ok = EVP_MD_CTX_copy_ex(h->work, h->primed) == 1 && EVP_DigestUpdate(h->work, block, len) == 1;
    else
        ok = EVP_DigestInit_ex(h->work, NULL, NULL) == 1 && EVP_DigestUpdate(h->work, block, len) == 1 &&
             (h->salt_size == 0 || EVP_DigestUpdate(h->work, h->salt, h->salt_size) == 1);
    unsigned int n = 0;
    if (!ok || EVP_DigestFinal_ex(h->work, out, &n) != 1 || n != h->digest_size)
        return -EIO;
    return 0;
}

int verity_pread_full(int fd, void *buf, size_t len, uint64_t offset)
{
    uint8_t *p = buf;
    while (len > 0) {
        ssize_t n = pread(fd, p, len, (off_t)offset);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (n == 0)
            return -EIO;
        p += n;
        len -= (size_t)n;
        offset += (uint64_t)n;
    }
    return 0;
}
