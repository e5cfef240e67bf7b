/* nkey.h - the public key of a NATS NKey seed (nats.c 3.4.1's natsOptions_SetNKeyFromSeed wants both). */
#ifndef MES_NKEY_H
#define MES_NKEY_H

#include <stddef.h>

/* Encodes raw bytes as NATS does: base32 (RFC 4648 alphabet, no padding). Returns the length written (out must
 * hold (n * 8 + 4) / 5 + 1 bytes), or 0 when it does not fit. */
size_t nkey_base32_encode(const unsigned char *in, size_t n, char *out, size_t outlen);
/* CRC-16/XMODEM as NKeys use it (polynomial 0x1021, initial 0), stored little-endian after the payload. */
unsigned nkey_crc16(const unsigned char *p, size_t n);
/* Derives the public key ("U...", 56 characters) from an encoded seed ("SU...", 58 characters): base32 decode,
 * checksum check, ed25519 key from the 32-byte seed (OpenSSL), encoded with the seed's type prefix. Returns 0, or
 * -1 with a reason in why (which never contains the seed). */
int nkey_public_from_seed(const char *seed, char *pub, size_t publen, char *why, size_t whylen);
/* Reads the first seed line of a seed file or credentials file into seed (trimmed). Returns 0 or -1 (why). */
int nkey_read_seed_file(const char *path, char *seed, size_t seedlen, char *why, size_t whylen);

#endif
