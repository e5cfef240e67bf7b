/* nkey.c - NKey seed -> public key (base32 + CRC-16 + ed25519 through OpenSSL's libcrypto). */
#include "nkey.h"

#include <errno.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <string.h>

static const char B32[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

#define PREFIX_SEED (18u << 3) /* 'S' */

size_t nkey_base32_encode(const unsigned char *in, size_t n, char *out, size_t outlen)
{
    size_t need = (n * 8 + 4) / 5, o = 0;
    unsigned buf = 0;
    int bits = 0;
    if (outlen < need + 1)
        return 0;
    for (size_t i = 0; i < n; i++) {
        buf = (buf << 8) | in[i];
        bits += 8;
        while (bits >= 5) {
            out[o++] = B32[(buf >> (bits - 5)) & 31];
            bits -= 5;
        }
    }
    if (bits > 0)
        out[o++] = B32[(buf << (5 - bits)) & 31];
    out[o] = '\0';
    return o;
}

static int base32_decode(const char *in, unsigned char *out, size_t outlen, size_t *n)
{
    unsigned buf = 0;
    int bits = 0;
    size_t o = 0;
    for (; *in; in++) {
        const char *c = strchr(B32, *in);
        if (!c)
            return -1;
        buf = (buf << 5) | (unsigned)(c - B32);
        bits += 5;
        if (bits >= 8) {
            if (o == outlen)
                return -1;
            out[o++] = (unsigned char)(buf >> (bits - 8));
            bits -= 8;
        }
    }
    *n = o;
    return 0;
}

unsigned nkey_crc16(const unsigned char *p, size_t n)
{
    unsigned crc = 0;
    for (size_t i = 0; i < n; i++) {
        crc ^= (unsigned)p[i] << 8;
        for (int b = 0; b < 8; b++)
            crc = crc & 0x8000 ? ((crc << 1) ^ 0x1021) & 0xffff : (crc << 1) & 0xffff;
    }
    return crc;
}

int nkey_public_from_seed(const char *seed, char *pub, size_t publen, char *why, size_t whylen)
{
    unsigned char raw[64], key[35];
    size_t n = 0, klen = 32;
    int rc = -1;
    if (!seed || base32_decode(seed, raw, sizeof raw, &n) != 0 || n != 36) {
        snprintf(why, whylen, "not an encoded NKey seed (base32 of 36 bytes)");
        return -1;
    }
    unsigned crc = nkey_crc16(raw, 34);
    if ((raw[34] | (unsigned)raw[35] << 8) != crc || (raw[0] & 0xf8) != PREFIX_SEED) {
        snprintf(why, whylen, "not an NKey seed (bad prefix or checksum)");
        return -1;
    }
    key[0] = (unsigned char)(((raw[0] & 7) << 5) | (raw[1] >> 3)); /* the key type: 'U' user, 'A' account... */
    EVP_PKEY *pk = EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, NULL, raw + 2, 32);
    if (!pk || EVP_PKEY_get_raw_public_key(pk, key + 1, &klen) != 1 || klen != 32) {
        snprintf(why, whylen, "cannot derive the ed25519 public key");
        goto cleanup;
    }
    crc = nkey_crc16(key, 33);
    key[33] = (unsigned char)(crc & 0xff);
    key[34] = (unsigned char)(crc >> 8);
    if (nkey_base32_encode(key, sizeof key, pub, publen) == 0) {
        snprintf(why, whylen, "public key buffer too small");
        goto cleanup;
    }
    rc = 0;
cleanup:
    EVP_PKEY_free(pk);
    memset(raw, 0, sizeof raw);
    return rc;
}

int nkey_read_seed_file(const char *path, char *seed, size_t seedlen, char *why, size_t whylen)
{
    FILE *f = fopen(path, "r");
    char line[1024];
    if (!f) {
        snprintf(why, whylen, "cannot open: %s", strerror(errno));
        return -1;
    }
    int rc = -1;
    while (fgets(line, sizeof line, f)) {
        char *a = line, *b = line + strlen(line);
        while (*a == ' ' || *a == '\t')
            a++;
        while (b > a && (b[-1] == '\n' || b[-1] == '\r' || b[-1] == ' ' || b[-1] == '\t'))
            *--b = '\0';
        if (a[0] == 'S' && (size_t)(b - a) < seedlen && strspn(a, B32) == (size_t)(b - a)) {
            memcpy(seed, a, (size_t)(b - a) + 1);
            rc = 0;
            break;
        }
    }
    memset(line, 0, sizeof line);
    fclose(f);
    if (rc)
        snprintf(why, whylen, "no NKey seed (a line starting with S) in the file");
    return rc;
}
