/* secrets.h - the configured secrets, and the one filter library error texts pass through before they are logged,
 * printed or stored (issue 17: libpq echoed a password fragment in "invalid integer value ... for option port"). */
#ifndef MES_SECRETS_H
#define MES_SECRETS_H

#include <stddef.h>

/* Parses the secrets out of a connection string and registers them: the password of every URI (scheme://user:
 * pass@host, lists separated by commas; for non-PostgreSQL schemes a user without a password is a token), and the
 * password=... value of a key=value DSN or a URI query. Call at startup, before other threads log (the registry
 * is read without a lock). NULL and strings without a secret are ignored. */
void secrets_register_dsn(const char *dsn);
/* Registers one secret: the text itself, its percent-decoded form, and every fragment of either between
 * delimiters (any character other than a letter, digit, '-', '.', '_' or '~') that is at least
 * SECRETS_MIN_FRAGMENT bytes long: a library that split the password at such a character echoes a fragment. */
void secrets_register(const char *secret);
/* Forgets every registered secret (tests). */
void secrets_clear(void);
/* Copies in into out (always NUL-terminated, truncated to outlen) with every occurrence of a registered secret
 * or fragment replaced by "****", then with config_mask_secret's pattern masking (user:pass@ in URLs,
 * password=... in DSNs) applied. */
void secrets_mask(const char *in, char *out, size_t outlen);

#define SECRETS_MIN_FRAGMENT 3

#endif
